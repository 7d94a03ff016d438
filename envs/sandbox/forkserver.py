"""The sandbox's fork server: a warm interpreter that keeps a locked-down process armed per caller.

Started by `envs.sandbox.Sandbox` as `python -E -S envs/sandbox/forkserver.py FD FILTERS [weak]`, with the
environment model code will see, so nothing of the trainer (memory, env vars, threads)
reaches it. It imports nothing from the `envs` package (gymnasium would triple the cost of
each fork): its own parts beside this file (`protocol`, `isolation`, `armed`, `child`) and the
trusted drivers (`DRIVERS`, named by a run as "g2048/rules.py:play_games") load by bare name.

Process tree:

    fork server (root; one empty network namespace and one IPC namespace without IPC for
      │          all runs; never runs model code)
      └─ runner, one per concurrent caller (root, trusted, own mount namespace): serves its
         │  caller's runs one at a time: the deadline, output caps, the driver
         └─ zygote (root, trusted): idle but for arming the runner's next child and reaping it
            └─ child, one per run, forked and locked down *before* its run is asked for:
               PID 1 of a fresh PID namespace, in a fresh empty network namespace,
               chrooted into a fresh size-capped tmpfs,
               unprivileged uid; gets its code and rlimits, runs, is killed, is never reused

So a run costs only its job, its calls and its result: the fork, the namespaces, the tmpfs,
the chroot and the uid switch happen while the caller is busy elsewhere. Runner and zygote
never run model code: they read the child's JSON frames (nothing is unpickled) and its
output. When the child (PID 1) dies, the kernel kills everything it forked, so no fork
bomb or `setsid` outlives a run. Not root, the server first enters a user namespace of its
own and goes on as PID 1 of a PID namespace it owns (`_own_pid_namespace`); each child then
enters a user namespace of its own and drops every capability. Everything runs under the
seccomp filter of `syscalls.py`, loaded here once. Where the kernel refuses namespaces, or
they are switched off (`weak`), the same tree runs with rlimits, a process group, a scratch
cwd, Landlock where the kernel has it (`landlock.py`) and an audit hook (Python-level blocks
that ctypes can bypass); as root, each run also has its own uid, all of whose processes are
killed after the run. `_isolation` says exactly what is in force.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import importlib
import itertools
import json
import os
import shutil
import signal
import socket
import stat
import struct
import sys
import tempfile
import time
import traceback

from armed import Child, _fds
from isolation import (
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    MNT_DETACH,
    MS_PRIVATE,
    MS_REC,
    MS_REMOUNT,
    PR_SET_NO_NEW_PRIVS,
    PR_SET_PDEATHSIG,
    _isolation,
    _libc,
    _mount,
    _mount_tmpfs,
    _unshare,
)
from protocol import DRIVERS, CallError, ChildGone, check_driver, clip, read_frame, write_frame
from syscalls import install as install_syscall_filter

# Modules the child may import without a filesystem (it is chrooted into an empty tmpfs).
PRELOAD = ["array", "bisect", "builtins", "collections", "copy", "dataclasses", "functools", "heapq",
           "itertools", "json", "math", "cmath", "operator", "random", "re", "statistics", "string",
           "time", "typing",
           # present so that escape attempts meet the OS limits, not a missing module
           "ctypes", "socket", "signal", "gc", "locale", "_posixsubprocess", "fcntl"]
# The trusted drivers (protocol.DRIVERS) are loaded here, once each, by their bare file names with their
# folders on the path (stdlib only, like their siblings there).
ENVS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DRIVER_MODULES: dict = {}
# Importable too, but compiled here and run only in a child that imports them: `threading`
# loaded here would cost every child its after-fork hook (see child.OnDemand).
ON_DEMAND = ["threading", "subprocess"]
# Runner n's runs take uids base + n * UID_SPAN + (run % UID_SPAN): concurrent runs never share
# a uid (RLIMIT_NPROC counts per uid, kill() works within one), and a runner reuses one only
# UID_SPAN runs later, long after every process of that run is gone. Each pool on the machine (a
# trainer, a data-parallel rank, another job) holds a block of its own, base = UID_BASE + slot *
# UID_BLOCK, for as long as it lives (`_uid_block`): pools that shared uids killed each other's runs.
UID_BASE, UID_SPAN, MAX_RUNNERS = 200_000, 1024, 4096
UID_BLOCK = UID_SPAN * MAX_RUNNERS
UID_SLOTS = 1000  # UID_BASE + UID_SLOTS * UID_BLOCK stays below 2**32 - 1, the largest uid
UID_LOCKS = "/tmp/toolgym-sandbox-uids"  # one lock file per slot, flock()ed by the pool holding it
SCRATCH_MB = 16  # the tmpfs a child is armed with; a run that asks for another size remounts it


# ---------------------------------------------------------------------------------------
# The server: forks one runner per socket the trainer sends


def serve(sock_fd: int, filters: dict, namespaces: bool = True) -> None:
    sock = socket.socket(fileno=sock_fd)
    for name in PRELOAD:
        importlib.import_module(name)
    names = [os.path.basename(path) for path in DRIVERS]
    if len(set(names)) != len(names):  # loaded by bare name: two `rules.py` would be one module
        raise RuntimeError(f"sandbox drivers must have distinct file names: {DRIVERS}")
    for path in DRIVERS:
        folder, name = os.path.split(os.path.join(ENVS, path))
        if folder not in sys.path:
            sys.path.append(folder)  # after the stdlib: a driver's sibling never shadows a stdlib module
        _DRIVER_MODULES[path] = importlib.import_module(name.removesuffix(".py"))
    harness = importlib.import_module("child")  # beside this file: what every child runs
    sys.meta_path.insert(0, harness.OnDemand(ON_DEMAND))
    state = {"isolation": _isolation(namespaces), "root": tempfile.mkdtemp(prefix="toolgym-sandbox-"),
             "base_vm": _vm_bytes(), "child": harness,
             "uid_base": _uid_block() if os.geteuid() == 0 else None}
    os.chmod(state["root"], 0o755)
    if state["isolation"]["mode"] == "namespaces" and os.geteuid() != 0:
        _own_pid_namespace(sock, state["root"])  # only PID 1 of a new PID namespace returns
    # Done once here, inherited by every process below: no setuid binary can give privileges
    # back, and the environment is already the children's (`Sandbox` starts us with it).
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    # Last, once everything above is done: inherited by every runner, zygote and child (see syscalls.py).
    state["isolation"]["syscalls"] = install_syscall_filter(filters, state["isolation"]["mode"] == "namespaces")
    if "not_protected" in state["isolation"] and "missing" in filters:  # weak, and no filter either
        state["isolation"]["not_protected"].append("the trainer's kernel keyring, sockets made through ctypes, "
                                                   "SysV IPC objects outliving the run (no seccomp filter)")
    gc.freeze()  # forked processes then never walk (and so copy) the server's objects
    sock.sendall(json.dumps(state["isolation"]).encode())
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # runners are reaped by the kernel
    try:
        for index in itertools.count():
            msg, anc, _, _ = sock.recvmsg(16, socket.CMSG_SPACE(4))
            if not msg:
                return  # the trainer closed its end (or died)
            fds = _fds(anc)
            if len(fds) == 1 and os.fork() == 0:
                code = 1
                try:
                    sock.close()
                    _runner(fds[0], index % MAX_RUNNERS, state)
                    code = 0
                finally:
                    os._exit(code)
            for fd in fds:
                os.close(fd)
    finally:
        os.rmdir(state["root"])


def _own_pid_namespace(sock: socket.socket, root: str) -> None:
    """Not root (in a user namespace): go on as PID 1 of a new PID namespace, which that user namespace owns.
    A zygote re-enters its own PID namespace before each run (setns), which the kernel allows only in a PID
    namespace owned by a user namespace where it holds CAP_SYS_ADMIN: not the machine's. The process the
    trainer started only waits, and exits as the server did; all below die with the server (its PID 1)."""
    _unshare(CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        return
    sock.close()  # the trainer's end sees the server's exit, not this process's copy
    _, status = os.waitpid(pid, 0)
    try:
        os.rmdir(root)  # the server's own cleanup, should it have been killed
    except OSError:
        pass
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)  # killed by signal n: 128 + n, as a shell says it


def _uid_block() -> int:
    """The first uid of a block no other live pool on this machine holds. Slot n is held by an
    flock() on lock file n, which the kernel drops when this server exits, however it exits. The
    folder must be root's alone: a run's code (weak mode sees /tmp) must not hold or fake slots."""
    os.makedirs(UID_LOCKS, mode=0o700, exist_ok=True)
    info = os.lstat(UID_LOCKS)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077:
        raise PermissionError(f"{UID_LOCKS} must be a folder of root's with mode 0700 (sandbox uid slots); "
                              f"found owner uid {info.st_uid}, mode {stat.filemode(info.st_mode)}: remove it")
    for slot in range(UID_SLOTS):
        fd = os.open(os.path.join(UID_LOCKS, str(slot)), os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _HELD_SLOTS.append(fd)  # open for this server's life: the lock lives as long as the fd
        return UID_BASE + slot * UID_BLOCK
    raise RuntimeError(f"all {UID_SLOTS} sandbox uid slots on this machine are held by live pools")


_HELD_SLOTS: list[int] = []


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


# ---------------------------------------------------------------------------------------
# The runner: trusted, serves one caller's runs one at a time


def _runner(sock_fd: int, index: int, state: dict) -> None:
    """Serve runs from `sock_fd` until the caller closes it, each in a child armed beforehand."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)  # and so in every child
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a child's over-long file is an OSError, not a crash
    strong = state["isolation"]["mode"] == "namespaces"
    if strong:
        _unshare(CLONE_NEWNS)  # the zygote's tmpfs mounts are this runner's alone
        _mount(b"none", b"/", None, MS_REC | MS_PRIVATE)
    zygote, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if os.fork() == 0:
        code = 1
        try:
            os.close(sock_fd)
            zygote.close()
            _zygote(theirs, index, state)
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    while True:
        zygote.send(b"arm")
        child = Child(zygote, state)
        try:
            try:
                req = read_frame(sock_fd)
            except EOFError:  # the caller is gone
                child.kill()
                return
            if strong and req["limits"]["scratch_mb"] != SCRATCH_MB:
                _mount_tmpfs(state["root"], req["limits"]["scratch_mb"], child.uid, MS_REMOUNT)
            write_frame(sock_fd, _run(child, req))
        finally:
            child.reap()  # after the reply: off the caller's clock


def _zygote(sock: socket.socket, index: int, state: dict) -> None:
    """Arm one child at a time for the runner above, and reap it; idle in between.

    Forking from this otherwise idle process is what keeps a run cheap: the runner, busy with
    JSON and drivers, would take a copy-on-write fault on every page it touched after a fork.
    """
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # die with the runner
    strong = state["isolation"]["mode"] == "namespaces"
    if strong:
        own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY)
    for run in itertools.count():
        if not sock.recv(16):
            return  # the runner is done
        uid = state["uid_base"] + index * UID_SPAN + run % UID_SPAN if state["uid_base"] is not None else None
        if strong:
            scratch = state["root"]
            _mount_tmpfs(scratch, SCRATCH_MB, uid)
            # Back into our own PID namespace first: unshare fails from inside the last run's.
            if _libc.setns(own_pid_ns, CLONE_NEWPID) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            # A network namespace of its own too: runs in flight at once could otherwise meet
            # through abstract unix sockets, which live in the network namespace (~0.6 ms).
            _unshare(CLONE_NEWPID | CLONE_NEWNET)
        else:
            scratch = tempfile.mkdtemp(prefix="toolgym-scratch-")
            if uid is not None:
                os.chown(scratch, uid, uid)
        pipes = {name: os.pipe() for name in ("calls", "replies", "out", "err")}
        pid = os.fork()
        if pid == 0:
            try:
                state["child"].main(pipes, scratch, uid, state)
            except BaseException:  # noqa: BLE001 - the forked run must exit here, never return into the server loop
                try:
                    traceback.print_exc()
                finally:
                    os._exit(70)
            os._exit(70)
        fds = [os.pidfd_open(pid), pipes["calls"][1], pipes["replies"][0], pipes["out"][0], pipes["err"][0]]
        sock.sendmsg([struct.pack("ii", pid, -1 if uid is None else uid)],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
        os.close(fds[0])
        for r, w in pipes.values():
            os.close(r)
            os.close(w)
        _, status, ru = os.wait4(pid, 0)
        if strong:
            if _libc.umount2(scratch.encode(), MNT_DETACH) != 0:
                raise OSError(ctypes.get_errno(), f"umount {scratch!r}")
        else:
            if uid is not None:
                _kill_uid(uid)
            shutil.rmtree(scratch, ignore_errors=True)
        sock.send(struct.pack("idd", status, ru.ru_utime, ru.ru_stime))


def _kill_uid(uid: int) -> None:
    """Weak mode as root: end every process of the run's own uid, including one that left the
    run's process group with setsid(). kill(-1) as that uid reaches exactly its processes."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        except BaseException:  # noqa: BLE001, S110 - nothing left to kill, or nothing may be raised here
            pass
        os._exit(0)
    os.waitpid(pid, 0)


def _run(child: Child, req: dict) -> dict:
    """One run in an armed child: hand it the job, call its function (or the driver), report."""
    started = time.monotonic()
    value, failure = None, None
    try:
        child.start({k: req[k] for k in ("code", "entry", "allowed_imports", "limits")}, started)
        if req["driver"]:
            check_driver(req["driver"])  # the caller checked too: this one guards the trusted side
            path, _, fn = req["driver"].rpartition(":")
            value = getattr(_DRIVER_MODULES[path], fn)(child, **req["driver_args"])
        elif req["entry"]:
            value = child.call(*req["args"])
    except CallError as e:
        failure = str(e)
    except ChildGone:
        pass
    except Exception as e:  # noqa: BLE001 - a driver bug: report it, never hang
        failure = f"driver {req['driver']} failed: {type(e).__name__}: {e}"
    status, error = child.finish(failure)
    error = clip(error, req["limits"]["error_chars"])  # a driver's own failure message, say
    return {"status": status, "value": value if status == "ok" else None, "error": error,
            "stdout": child.out.decode(errors="replace"), "stderr": child.err.decode(errors="replace"),
            "truncated": child.truncated, "cpu_s": child.cpu_s,
            "wall_s": time.monotonic() - started, "isolation": child.isolation}


if __name__ == "__main__":
    serve(int(sys.argv[1]), json.loads(sys.argv[2]), namespaces="weak" not in sys.argv[3:])
