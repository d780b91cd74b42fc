"""`mai serve` in a child process on a free 127.0.0.1 port, for commands that need a model behind the
OpenAI API for a while: the recipe's teacher, `mai eval --judge`'s judge.

The child is waited for via /health and stopped when its user is done — on success, on an error, and
(through the kernel's parent-death signal) when the parent itself is killed, even with SIGKILL.
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


def require_reachable(base_url: str, what: str) -> None:
    """MaiError unless something answers at ``base_url`` (any HTTP status will do: not every
    OpenAI-compatible server has a /health)."""
    status, why = health(base_url)
    if status == 0:
        raise MaiError(f"{what} at {base_url} is unreachable ({why})")


class ServeChild:
    """``mai serve SERVE_ARGS --port P`` started by :meth:`start` (which returns its ``/v1`` base URL once
    healthy), ended by :meth:`stop` (safe to call more than once)."""

    def __init__(self, serve_args: list[str], log_path: Path, startup_timeout_s: float = 600.0,
                 log: Callable[[str], None] = print) -> None:
        self.serve_args, self.log_path, self.startup_timeout_s, self.log = serve_args, log_path, \
            startup_timeout_s, log
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, what: str) -> str:
        """Start and wait until healthy; ``what`` names the server in errors ("stage dpo: the teacher")."""
        port = free_port()
        cmd = [sys.executable, "-m", "mai.cli", "serve", *self.serve_args, "--port", str(port)]
        shown = " ".join(self.serve_args)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        log.close()
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                self.proc = None
                raise MaiError(f"{what} `mai serve {shown}` exited ({tail[0]}; log: {self.log_path})")
            status, body = health(url, timeout=2.0)
            if status == 200:
                return url
            if status == 503 and '"error"' in body:
                self.stop()
                raise MaiError(f"{what} failed to load: {body}")
            time.sleep(0.5)
        self.stop()
        raise MaiError(f"{what} was not ready after {self.startup_timeout_s:g} s (log: {self.log_path})")

    def stop(self) -> bool:
        """End the child (SIGTERM, SIGKILL after 30 s); False when none was running."""
        proc, self.proc = self.proc, None
        if proc is None:
            return False
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return True
