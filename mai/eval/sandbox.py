"""Run untrusted generated programs (HumanEval / MBPP completions) so that they cannot harm the machine.

Each program runs in its own process tree set up by :mod:`mai.eval.sandbox_init` (see there for the
mechanism): new mount, network, PID, IPC and UTS namespaces; a new root on a size-limited tmpfs that holds
only read-only system libraries and the Python installation (no home folders, no project tree, no host
/tmp); an unprivileged uid; and limits on CPU time, address space, file size, processes and open files.
The launcher kills the sandbox's PID 1, and with it every process of its PID namespace, at the wall
timeout, and reaps it, so nothing outlives a run.

What holds, as measured by ``tests/eval/test_sandbox.py`` as root on Linux 6.x: a fork bomb stays under
the process limit and dies with the run; an infinite loop dies of its CPU limit; files outside the work
folder cannot be written (no path leads to them) and the user's files cannot be read (they are not in
the new root); a socket cannot reach a listener on 127.0.0.1 (a separate, down loopback).

Namespaces need root here (``RLIMIT_NPROC`` is only enforced for a non-root uid, which the sandbox drops
to); without them :func:`sandbox_problem` says why and no code runs: there is no weaker fallback.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import IO

from mai.errors import MaiError

LAUNCHER = Path(__file__).with_name("sandbox_init.py")
UID_BASE = 61000  # sandbox slot k runs as uid/gid UID_BASE + k: its own process count for RLIMIT_NPROC
SYSTEM_BINDS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache")
BACKSTOP_SECONDS = 10.0  # past the wall timeout, should the launcher itself not return


@dataclass(frozen=True)
class Limits:
    """Per-program limits. ``processes`` counts every task (thread or process) of the sandbox uid."""

    cpu_seconds: int = 10
    wall_seconds: float = 20.0
    memory_bytes: int = 1 << 30
    file_bytes: int = 1 << 20  # any one file written, the captured stdout/stderr included
    processes: int = 8
    open_files: int = 64
    tmpfs_bytes: int = 32 << 20  # everything the program writes, in all files together
    output_chars: int = 4000  # kept of stdout / stderr each


@dataclass(frozen=True)
class Outcome:
    """How a program ended. ``returncode`` is 128 + signal when a signal (a limit) ended it."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def python_interpreter() -> str:
    """The base interpreter (a venv's python is a symlink into it; the venv itself is not bound)."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def binds() -> list[str]:
    """Paths visible (read-only) inside the sandbox: system libraries and the Python installation."""
    paths = [p for p in SYSTEM_BINDS if os.path.lexists(p)]
    python_home = os.path.realpath(sys.base_prefix)
    if not any(python_home == p or python_home.startswith(p + "/") for p in paths):
        paths.append(python_home)
    return paths


@cache
def sandbox_problem() -> str | None:
    """Why programs cannot be sandboxed here (None when they can): tried once with a trivial program."""
    if sys.platform != "linux":
        return "sandboxed code execution needs Linux namespaces"
    if os.geteuid() != 0:
        return "sandboxed code execution needs root (namespaces, and an unprivileged uid to drop to)"
    out = _run("print('ok')", Limits(), 0)
    if out.returncode != 0 or out.stdout.strip() != "ok":
        return f"the sandbox does not start here: {out.stderr.strip() or out.returncode}"
    return None


def require_sandbox() -> None:
    if problem := sandbox_problem():
        raise MaiError(f"{problem}; code tasks (humaneval, mbpp) cannot run")


def run_program(source: str, limits: Limits = Limits(), slot: int = 0) -> Outcome:
    """Run one Python program in the sandbox; MaiError when this machine cannot sandbox."""
    require_sandbox()
    return _run(source, limits, slot)


def run_programs(sources: Sequence[str], limits: Limits = Limits(), workers: int = 2) -> list[Outcome]:
    """Run many programs, ``workers`` at a time, each worker in its own uid slot."""
    require_sandbox()
    slots: queue.Queue[int] = queue.Queue()
    for k in range(workers):
        slots.put(k)

    def one(source: str) -> Outcome:
        slot = slots.get()
        try:
            return _run(source, limits, slot)
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, sources))


def _run(source: str, limits: Limits, slot: int) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="mai-sandbox-") as tmp:
        root = Path(tmp, "root")
        root.mkdir()
        spec = {**asdict(limits), "root": str(root), "uid": UID_BASE + slot, "binds": binds(),
                "python": python_interpreter(), "argv": ["program.py"], "files": {"program.py": source},
                "status": str(Path(tmp, "status.json"))}
        with open(Path(tmp, "stdout"), "w+b") as out, open(Path(tmp, "stderr"), "w+b") as err:
            returncode, timed_out = _launch(spec, out, err, limits.wall_seconds + BACKSTOP_SECONDS)
            return Outcome(returncode, _tail(out, limits.output_chars), _tail(err, limits.output_chars),
                           timed_out)


def _launch(spec: dict, out: IO[bytes], err: IO[bytes], backstop: float) -> tuple[int, bool]:
    """Start the launcher (which enforces the wall timeout itself, see :mod:`mai.eval.sandbox_init`) in
    its own session and read how the program ended. Should the launcher itself hang, SIGKILL its process
    group at the backstop: PID 1 of the sandbox then dies of ``PR_SET_PDEATHSIG``, and its namespace
    with it."""
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(LAUNCHER)], stdin=subprocess.PIPE, stdout=out,
                            stderr=err, start_new_session=True)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(spec).encode())
    proc.stdin.close()
    try:
        code = proc.wait(backstop)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return 128 + signal.SIGKILL, True
    try:
        status = json.loads(Path(spec["status"]).read_text())
    except (OSError, ValueError):  # the launcher failed before the program ran
        return code, False
    return int(status["returncode"]), bool(status["timed_out"])


def _tail(fh: IO[bytes], chars: int) -> str:
    fh.seek(0)
    text = fh.read().decode("utf-8", "replace")
    return text if len(text) <= chars else "…" + text[-chars:]
