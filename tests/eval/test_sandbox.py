"""Hostile programs in the sandbox cannot harm the machine or the run; a correct program passes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from pathlib import Path

import pytest

from mai.errors import MaiError
from mai.eval import sandbox
from mai.eval.sandbox import UID_BASE, Limits, run_program

PROBLEM = sandbox.sandbox_problem()
# skip where the machine cannot give namespaces (not Linux, not root, unshare refused); a sandbox that
# breaks anywhere else fails the tests instead of hiding behind a skip
UNSUPPORTED = PROBLEM is not None and ("needs" in PROBLEM or "Operation not permitted" in PROBLEM)
pytestmark = pytest.mark.skipif(UNSUPPORTED, reason=str(PROBLEM))


def tasks_of_uid(uid: int) -> int:
    """Live (not zombie) processes on this machine whose real uid is ``uid`` (a sandbox slot's)."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        count += int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z")
    return count


def test_a_correct_solution_passes_and_a_wrong_one_fails():
    program = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint('fine')\n"
    ok = run_program(program)
    assert ok.passed and ok.stdout == "fine\n"
    wrong = run_program(program.replace("a + b", "a - b"))
    assert not wrong.passed and "AssertionError" in wrong.stderr


def test_a_fork_bomb_stays_under_the_process_limit_and_dies_with_the_run():
    slot, limit = 5, Limits(processes=6, cpu_seconds=2, wall_seconds=3)
    peak, done = [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tasks_of_uid(UID_BASE + slot))
            done.wait(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out = run_program("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n"
                          "        pass\n", limit, slot)
    finally:
        done.set()
        watcher.join()
    assert not out.passed
    assert 1 < peak[0] <= limit.processes  # it did fork, and no further than the limit
    assert tasks_of_uid(UID_BASE + slot) == 0  # nothing of it survives the run


def test_an_infinite_loop_dies_of_its_cpu_limit():
    out = run_program("while True:\n    pass\n", Limits(cpu_seconds=1, wall_seconds=60))
    assert not out.timed_out and out.returncode in (128 + signal.SIGXCPU, 128 + signal.SIGKILL)


def test_a_sleeper_is_killed_at_the_wall_timeout_with_its_children():
    slot = 6
    out = run_program("import os, time\nos.fork()\nos.setsid()\ntime.sleep(600)\n",
                      Limits(wall_seconds=1), slot)
    assert out.timed_out and not out.passed
    assert tasks_of_uid(UID_BASE + slot) == 0


def test_files_outside_its_folder_cannot_be_written(tmp_path):
    existing = tmp_path / "existing.txt"
    existing.write_text("original")
    existing.chmod(0o666)
    targets = [str(existing), str(tmp_path / "new.txt"), "/usr/evil.txt", "/evil.txt", "/dev/evil"]
    program = (f"for path in {targets!r}:\n    try:\n        open(path, 'w').write('x')\n"
               "        print('wrote', path)\n    except OSError as exc:\n        print('refused', path, "
               "type(exc).__name__)\n")
    out = run_program(program)
    assert out.stdout.count("refused") == len(targets), out.stdout
    assert existing.read_text() == "original" and not (tmp_path / "new.txt").exists()
    assert not Path("/usr/evil.txt").exists() and not Path("/evil.txt").exists()


def test_a_file_larger_than_the_limit_cannot_be_written():
    program = ("try:\n    open('big', 'wb').write(b'x' * (3 << 20))\nexcept OSError as exc:\n"
               "    print('errno', exc.errno)\n")
    out = run_program(program, Limits(file_bytes=1 << 20))
    assert out.stdout.strip() == "errno 27"  # EFBIG


def test_the_users_files_and_environment_cannot_be_read(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    secret = home / "secret.txt"
    secret.write_text("hunter2")
    secret.chmod(0o644)  # readable by every uid: only the filesystem view keeps it out
    monkeypatch.setenv("MAI_TEST_TOKEN", "hunter3")
    program = (f"import os\ntry:\n    print(open({str(secret)!r}).read())\nexcept OSError as exc:\n"
               f"    print(type(exc).__name__)\nprint(os.environ)\nprint(os.path.exists({str(tmp_path)!r}))\n"
               "print(os.listdir('/root'))\n")
    out = run_program(program)
    assert out.passed, out.stderr
    assert "hunter" not in out.stdout and "FileNotFoundError" in out.stdout and "False" in out.stdout


def test_a_socket_cannot_reach_a_local_listener():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(4)
        accepted: list[object] = []

        def accept() -> None:
            with contextlib.suppress(OSError):  # the timeout: nothing connected
                accepted.append(server.accept())

        thread = threading.Thread(target=accept)
        thread.start()
        port = server.getsockname()[1]
        out = run_program(f"import socket\ns = socket.socket()\ns.settimeout(2)\ntry:\n"
                          f"    s.connect(('127.0.0.1', {port}))\n    print('connected')\n"
                          f"except OSError as exc:\n    print('refused', exc.errno)\n")
        thread.join()
    assert not accepted and out.stdout.startswith("refused"), out.stdout


def test_memory_beyond_the_limit_is_refused():
    out = run_program("try:\n    x = bytearray(2 << 30)\nexcept MemoryError:\n    print('refused')\n",
                      Limits(memory_bytes=1 << 30))
    assert out.stdout.strip() == "refused"


def test_no_sandbox_means_no_code_runs(monkeypatch):
    monkeypatch.setattr(sandbox, "sandbox_problem", lambda: "no namespaces here")
    with pytest.raises(MaiError, match="no namespaces here.*cannot run"):
        run_program("print('should not run')")
