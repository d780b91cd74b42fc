"""The recipe's teacher: `mai serve` in a child process on a free 127.0.0.1 port, or a server already running.

The child is started only when a stage needs it, waited for via /health, and stopped when the recipe ends —
on success, on an error, and (through the kernel's parent-death signal) when the recipe itself is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from mai.errors import MaiError
from mai.recipe.config import TeacherConfig

PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): signal this process when its parent dies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def health(base_url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(HTTP status, body) of the server's /health, or (0, why) when it cannot be reached."""
    root = base_url.rstrip("/").removesuffix("/v1")
    try:
        with urllib.request.urlopen(f"{root}/health", timeout=timeout) as reply:
            return reply.status, reply.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(getattr(exc, "reason", exc))


class TeacherServer:
    """``url`` starts the teacher on first use; ``stop()`` ends it (safe to call more than once)."""

    def __init__(self, cfg: TeacherConfig, log_path: Path, log: Callable[[str], None] = print) -> None:
        self.cfg, self.log_path, self.log = cfg, log_path, log
        self.proc: subprocess.Popen | None = None
        self._url: str | None = None

    def url(self, stage: str) -> str:
        if self.cfg.base_url:  # a running server: it must answer (any HTTP status will do)
            status, why = health(self.cfg.base_url)
            if status == 0:
                raise MaiError(f"stage {stage}: the teacher at {self.cfg.base_url} is unreachable ({why})")
            return self.cfg.base_url
        if self._url is None:
            self._url = self._start(stage)
        return self._url

    def _start(self, stage: str) -> str:
        port = free_port()
        cmd = [sys.executable, "-m", "mai.cli", "serve", "--model", self.cfg.model, "--name", self.cfg.name,
               "--port", str(port), "--max-seq-len", str(self.cfg.max_seq_len),
               "--threads", str(self.cfg.threads)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        log.close()
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                self.proc = None
                raise MaiError(f"stage {stage}: the teacher `mai serve --model {self.cfg.model}` exited "
                               f"({tail[0]}; log: {self.log_path})")
            status, body = health(url, timeout=2.0)
            if status == 200:
                self.log(f"teacher    {self.cfg.model} served at {url} for stage {stage} "
                         f"(log: {self.log_path})")
                return url
            if status == 503 and '"error"' in body:
                self.stop()
                raise MaiError(f"stage {stage}: the teacher failed to load: {body}")
            time.sleep(0.5)
        self.stop()
        raise MaiError(f"stage {stage}: the teacher was not ready after {self.cfg.startup_timeout_s:g} s "
                       f"(log: {self.log_path})")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        self._url = None
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.log("teacher    stopped")
