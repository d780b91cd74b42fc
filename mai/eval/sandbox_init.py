"""The sandbox's first process (standard library only, run as ``python -I -S sandbox_init.py`` as root).

It reads a JSON spec on stdin, then, before running any untrusted code:

1. ``unshare`` new network, PID, IPC and UTS namespaces: the network namespace has only a loopback
   device, which is down, so no socket can reach this machine's or any other host's services;
2. forks: the child is PID 1 of the new PID namespace, so when it exits (or is killed) the kernel kills
   every process it started, and ``PR_SET_PDEATHSIG`` kills it when this parent is killed; the child
   alone enters a new mount namespace;
3. builds a new root on a size-limited tmpfs holding read-only binds of the system libraries and the
   Python installation only (no home folders, no /tmp, no project tree), plus a fresh work folder,
   and ``pivot_root`` s into it, detaching the old root so no path leads back to the real filesystem;
4. drops to an unprivileged uid/gid with no groups (so ``RLIMIT_NPROC`` holds: the kernel does not
   enforce it for root), sets the CPU, address-space, file-size, process and open-file limits, and
   ``exec`` s Python on the program with a minimal environment (HOME is the work folder).

It kills PID 1 (and so the whole namespace) at the wall timeout and writes ``{"returncode", "timed_out"}``
to the spec's ``status`` file: the program's exit status, 128 + signal when a signal ended it, 125 when
the sandbox could not be set up (its reason on stderr, prefixed ``sandbox:``).
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 1, 2, 4, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH, PR_SET_PDEATHSIG = 2, 1
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
SETUP_FAILED = 125
WORK = "/sandbox"

libc = ctypes.CDLL(None, use_errno=True)


def check(result: int, what: str) -> None:
    """Raise OSError with errno when a libc call returned -1."""
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    check(libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]), f"mount {target}")


def bind_readonly(path: str, root: str) -> None:
    """Make ``path`` visible at the same place under ``root``, read-only, setuid bits ignored. A symlink
    (``/lib -> usr/lib``) is recreated as the same symlink; a file is bound onto an empty file."""
    target = root + path
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.islink(path):
        os.symlink(os.readlink(path), target)
        return
    if os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
    else:
        open(target, "w").close()
    mount(path, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID)


def build_root(spec: dict) -> None:
    """The new filesystem: tmpfs root, read-only system binds, a writable work folder and /tmp."""
    root = spec["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here propagates to the real system
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, f"size={spec['tmpfs_bytes']},mode=755")
    for path in spec["binds"]:
        if os.path.lexists(path):
            bind_readonly(path, root)
    for device in ("/dev/null", "/dev/zero", "/dev/urandom"):
        os.makedirs(root + "/dev", exist_ok=True)
        open(root + device, "w").close()
        mount(device, root + device, None, MS_BIND)
    uid = spec["uid"]
    for folder, mode in ((WORK, 0o700), ("/tmp", 0o700)):
        os.makedirs(root + folder, mode=mode)
        os.chown(root + folder, uid, uid)
    for name, text in spec["files"].items():
        with open(os.path.join(root + WORK, name), "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chown(os.path.join(root + WORK, name), uid, uid)
    os.chdir(root)
    check(libc.syscall(SYS_PIVOT_ROOT[platform.machine()], b".", b"."), "pivot_root")
    check(libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir(WORK)
    os.dup2(os.open("/dev/null", os.O_RDONLY), 0)  # the spec pipe is not the program's input


def drop_privileges(spec: dict) -> None:
    """An unprivileged uid and gid, no supplementary groups, then the resource limits."""
    uid = spec["uid"]
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    limits = {resource.RLIMIT_CPU: spec["cpu_seconds"], resource.RLIMIT_AS: spec["memory_bytes"],
              resource.RLIMIT_FSIZE: spec["file_bytes"], resource.RLIMIT_NPROC: spec["processes"],
              resource.RLIMIT_NOFILE: spec["open_files"], resource.RLIMIT_CORE: 0}
    for which, value in limits.items():
        resource.setrlimit(which, (value, value))


def child(spec: dict) -> None:
    """PID 1 of the sandbox: set it up, then become the program."""
    # its own mount namespace: pivot_root moves the root of every process of the namespace it runs in
    check(libc.unshare(CLONE_NEWNS), "unshare mount namespace")
    build_root(spec)
    drop_privileges(spec)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
    env = {"HOME": WORK, "TMPDIR": "/tmp", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
           "PYTHONDONTWRITEBYTECODE": "1"}
    os.execve(spec["python"], [spec["python"], "-I", *spec["argv"]], env)


def main() -> int:
    spec = json.load(sys.stdin)
    try:
        check(libc.unshare(CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
    except OSError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return SETUP_FAILED
    pid = os.fork()
    if pid == 0:
        try:
            child(spec)
        except BaseException as exc:  # noqa: BLE001  (whatever failed, the program must not run)
            print(f"sandbox: {exc}", file=sys.stderr)
        os._exit(SETUP_FAILED)
    return wait_with_timeout(pid, spec)


def wait_with_timeout(pid: int, spec: dict) -> int:
    """Wait for the sandbox's PID 1, SIGKILL it at the wall timeout, record how it ended. Waiting for
    PID 1 itself (not killing this process) matters: the kernel reaps the whole namespace before PID 1
    is reaped, so nothing of the program outlives this function, not even a zombie."""
    timed_out = []

    def on_alarm(signum: int, frame: object) -> None:
        timed_out.append(True)
        os.kill(pid, signal.SIGKILL)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, spec["wall_seconds"])
    _, status = os.waitpid(pid, 0)
    signal.setitimer(signal.ITIMER_REAL, 0)
    code = os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    with open(spec["status"], "w") as fh:
        json.dump({"returncode": code, "timed_out": bool(timed_out)}, fh)
    return code


if __name__ == "__main__":
    sys.exit(main())
