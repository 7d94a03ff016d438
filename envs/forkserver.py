"""The sandbox's fork server: a warm interpreter that keeps a locked-down process armed per caller.

Started by `envs.sandbox.Sandbox` as `python -E -S envs/forkserver.py FD [weak]`, with the
environment model code will see, so nothing of the trainer (memory, env vars, threads)
reaches it. It imports nothing from the `envs` package (gymnasium would triple the cost of
each fork); the modules beside this file (`game2048_rules`, `kernel_tasks`, ...) are
importable by their bare names, which is how a run names its trusted driver.

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
bomb or `setsid` outlives a run. Without root, or with namespaces switched off (`weak`),
the same tree runs with rlimits, a process group, a scratch cwd and an audit hook
(Python-level blocks that ctypes can bypass); as root, each run also has its own uid, all
of whose processes are killed after the run. `_isolation` says exactly what is in force.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import importlib
import itertools
import json
import os
import select
import shutil
import signal
import socket
import stat
import struct
import sys
import tempfile
import time
import traceback

# Modules the child may import without a filesystem (it is chrooted into an empty tmpfs).
PRELOAD = ["array", "bisect", "builtins", "collections", "copy", "dataclasses", "functools", "heapq",
           "itertools", "json", "math", "cmath", "operator", "random", "re", "statistics", "string",
           "time", "typing",
           # present so that escape attempts meet the OS limits, not a missing module
           "ctypes", "socket", "signal", "gc", "locale", "_posixsubprocess", "fcntl",
           # trusted drivers
           "game2048_rules", "kernel_tasks", "sudoku_puzzles", "sudoku_games"]
# Importable too, but compiled here and run only in a child that imports them: `threading`
# loaded here would cost every child its after-fork hook (see sandbox_child.OnDemand).
ON_DEMAND = ["threading", "subprocess"]

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x08000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_REC, MS_PRIVATE, MNT_DETACH = 0x2, 0x4, 0x20, 0x4000, 0x40000, 0x2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
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
MAX_FRAME = 64 << 20
_libc = ctypes.CDLL(None, use_errno=True)


class CallError(Exception):
    """The model's function raised, or its reply was unusable."""


class ChildGone(BaseException):
    """The child exited or was killed before answering.

    A BaseException so that a driver's `except Exception` (around one bad move, say)
    cannot swallow the end of the run.
    """


# ---------------------------------------------------------------------------------------
# JSON frames over pipes and sockets


def write_frame(fd: int, obj, dumps=json.dumps) -> None:
    data = dumps(obj).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def read_frame(fd: int):
    head = _read_exact(fd, 4)
    (n,) = struct.unpack(">I", head)
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes exceeds {MAX_FRAME}")
    return json.loads(_read_exact(fd, n))


def _read_exact(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


# ---------------------------------------------------------------------------------------
# The server: forks one runner per socket the trainer sends


def _isolation(namespaces: bool) -> dict:
    """Which mechanisms are in force; decided once, reported with every result."""
    root = os.geteuid() == 0
    if root and namespaces and _libc.unshare(CLONE_NEWNET | CLONE_NEWIPC) == 0:
        ipc = "private IPC namespace where no SysV or POSIX IPC object can be created"
        try:
            for path, value in (("kernel/shmmni", "0"), ("kernel/msgmni", "0"), ("kernel/sem", "0 0 0 0"),
                                ("fs/mqueue/queues_max", "0")):  # this IPC namespace's own limits
                with open(f"/proc/sys/{path}", "w") as f:
                    f.write(value)
        except OSError as e:
            ipc = f"private IPC namespace shared by all runs (its limits could not be zeroed: {e})"
        return {"mode": "namespaces",
                "network": "empty network namespace per run (no interfaces up, no abstract unix socket of "
                           "another run)",
                "filesystem": "chroot into a fresh size-capped tmpfs per run, in a private mount namespace; "
                              "nothing else visible",
                "processes": "fresh PID namespace per run (its PID 1 takes every process along) + RLIMIT_NPROC",
                "ipc": ipc, "user": "unprivileged uid per run, no capabilities, no_new_privs"}
    why = "namespaces switched off" if not namespaces else "not root" if not root else \
        f"unshare(CLONE_NEWNET | CLONE_NEWIPC) failed: {os.strerror(ctypes.get_errno())}"
    hook = "audit hook (Python-level: ctypes or a C extension can bypass it)"
    return {"mode": "weak", "why": why, "network": f"{hook} blocks socket creation",
            "filesystem": f"fresh scratch directory as cwd; {hook} blocks open() outside it; "
                          "the rest of the filesystem is not hidden",
            "processes": ("own process group and uid, every process of that uid killed after the run (a "
                          "setsid() escapee too)" if root else
                          "own process group, killed with the run (setsid() escapes it)") +
                         f"; {hook} blocks fork, exec, subprocess and kill; RLIMIT_NPROC",
            "ipc": "the host's IPC namespace: SysV and POSIX IPC objects can outlive the run",
            "user": "unprivileged uid per run, no_new_privs" if root else
                    "the trainer's own uid (not root: nothing to drop to), no_new_privs"}


def serve(sock_fd: int, namespaces: bool = True) -> None:
    sock = socket.socket(fileno=sock_fd)
    for name in PRELOAD:
        importlib.import_module(name)
    harness = importlib.import_module("sandbox_child")  # beside this file: what every child runs
    sys.meta_path.insert(0, harness.OnDemand(ON_DEMAND))
    state = {"isolation": _isolation(namespaces), "root": tempfile.mkdtemp(prefix="toolgym-sandbox-"),
             "base_vm": _vm_bytes(), "child": harness,
             "uid_base": _uid_block() if os.geteuid() == 0 else None}
    os.chmod(state["root"], 0o755)
    # Done once here, inherited by every process below: no setuid binary can give privileges
    # back, and the environment is already the children's (`Sandbox` starts us with it).
    _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
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
            except BaseException:
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
        except BaseException:  # noqa: BLE001 - nothing left to kill, or nothing may be raised here
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
            module, _, fn = req["driver"].partition(":")
            value = getattr(importlib.import_module(module), fn)(child, **req["driver_args"])
        elif req["entry"]:
            value = child.call(*req["args"])
    except CallError as e:
        failure = str(e)
    except ChildGone:
        pass
    except Exception as e:  # a driver bug: report it, never hang
        failure = f"driver {req['driver']} failed: {type(e).__name__}: {e}"
    status, error = child.finish(failure)
    return {"status": status, "value": value if status == "ok" else None, "error": error,
            "stdout": child.out.decode(errors="replace"), "stderr": child.err.decode(errors="replace"),
            "truncated": child.truncated, "cpu_s": child.cpu_s,
            "wall_s": time.monotonic() - started, "isolation": child.isolation}


def _fds(ancillary) -> list[int]:
    """The file descriptors passed in a recvmsg's ancillary data."""
    return [fd for level, kind, data in ancillary if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
            for fd in struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4])]


def _unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare")


def _mount(source, target, fstype, flags, data=None) -> None:
    if _libc.mount(source, target, fstype, flags, data) != 0:
        raise OSError(ctypes.get_errno(), f"mount {target!r}")


def _mount_tmpfs(path: str, size_mb: int, uid: int, flags: int = 0) -> None:
    opts = f"size={size_mb}m,nr_inodes=4096,mode=0700,uid={uid},gid={uid}".encode()
    _mount(b"tmpfs", path.encode(), b"tmpfs", flags | MS_NOSUID | MS_NODEV, opts)


class Child:
    """The runner's handle on one sandboxed process, armed by the zygote before its run.

    Drivers call `call`, `stage`, `run_staged`, `flush_cache` and `colocate`.
    """

    def __init__(self, zygote: socket.socket, state: dict):
        """Take the next child the zygote armed: its pid, uid, a pidfd and the runner's ends of its pipes."""
        msg, anc, _, _ = zygote.recvmsg(16, socket.CMSG_SPACE(5 * 4))
        self.zygote = zygote
        self.pid, self.uid = struct.unpack("ii", msg)
        self.pidfd, self.calls, self.replies, self.out_fd, self.err_fd = _fds(anc)
        self.isolation = state["isolation"]["mode"]
        self.weak = self.isolation != "namespaces"
        self.streams = {self.out_fd: bytearray(), self.err_fd: bytearray()}
        self.closed: set[int] = set()
        # One poll set for the whole run (stdout, stderr and the fd a wait is for), not a fresh
        # select() list per move; the harness's JSON codec, not json.dumps/loads (~3 us a move).
        self.poller, self.watched = select.poll(), None
        for fd in self.streams:
            self.poller.register(fd, select.POLLIN)
        encode, self.scan = state["child"].ENCODE, state["child"].SCAN
        self.dumps = lambda obj: "".join(encode(obj, 0))
        self.deadline, self.cap, self.cpu_limit = float("inf"), 0, 0.0  # set by `start`
        self.buf = bytearray()
        self.timed_out = False
        self.truncated = False
        self.exit_status: int | None = None  # from wait4, once reaped
        self.cpu_s: float | None = None
        self.reported: dict | None = None  # the child's own last error report
        self.cpus: set[int] | None = None  # the runner's own CPUs while `colocate` has it pinned

    @property
    def out(self) -> bytes:
        return bytes(self.streams[self.out_fd])

    @property
    def err(self) -> bytes:
        return bytes(self.streams[self.err_fd])

    # -- what drivers use --------------------------------------------------------------

    def call(self, *args):
        """Call the model's function with JSON-able arguments and return its value."""
        return self._ask({"op": "call", "args": list(args)})

    def stage(self, *args) -> None:
        """Hand arguments to the child ahead of a timed `run_staged`."""
        self._ask({"op": "stage", "args": list(args)})

    def run_staged(self) -> float:
        """Call the function on the staged arguments; the round trip's seconds, timed out here."""
        t = time.perf_counter()
        self._ask({"op": "run_staged"})
        return time.perf_counter() - t

    def flush_cache(self) -> None:
        """Make the child touch 32 MiB so the next timing starts from a cold CPU cache."""
        self._ask({"op": "flush"})

    def colocate(self) -> None:
        """Keep the child and this runner on the runner's current CPU for the rest of the run.

        For drivers that call the child once per move: the two never run at once, and a
        round trip between two CPUs (waking an idle one, cold caches) costs up to 3x one on
        a single CPU (15 vs 16-55 us measured on a 2-vCPU VM). `reap` unpins the runner.
        """
        cpu = _libc.sched_getcpu()
        if cpu < 0 or self.cpus is not None:
            return
        self.cpus = os.sched_getaffinity(0)
        try:
            os.sched_setaffinity(0, {cpu})
            os.sched_setaffinity(self.pid, {cpu})
        except OSError:  # the child is gone, or a cpuset forbids it: unpinned is only slower
            pass

    # -- plumbing ----------------------------------------------------------------------

    def start(self, job: dict, started: float) -> None:
        """Hand the armed child its code and limits; returns once the code is defined."""
        limits = job["limits"]
        self.deadline, self.cap, self.cpu_limit = started + limits["wall_s"], limits["output_bytes"], limits["cpu_s"]
        self._ask(job)

    def _ask(self, msg: dict):
        try:
            write_frame(self.calls, msg, self.dumps)
        except OSError:
            raise ChildGone from None
        return self._reply()

    def _reply(self):
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack_from(">I", self.buf)
                if n > MAX_FRAME:
                    raise CallError(f"reply of {n} bytes is larger than {MAX_FRAME}")
                if len(self.buf) >= 4 + n:
                    frame, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    try:
                        text = frame.decode()
                        reply, end = self.scan(text, 0)
                        if end != len(text):
                            raise ValueError("trailing data")
                        if "error" in reply:
                            self.reported = reply
                            raise CallError(reply["error"])
                        return reply["value"]
                    except (ValueError, KeyError, TypeError, StopIteration):
                        raise CallError("the child sent a malformed reply") from None
            if self._wait(self.replies) != self.replies:
                raise ChildGone
            data = os.read(self.replies, 1 << 16)
            if not data:
                raise ChildGone
            self.buf += data

    def _wait(self, want: int | None, until: float | None = None) -> int | None:
        """Copy stdout/stderr (capped) until `want` is readable; None at `until` or the deadline.

        Reaching the run's deadline (the default `until`) kills the child.
        """
        if want != self.watched:
            self._watch(want)
        while True:
            left = (until or self.deadline) - time.monotonic()
            if left <= 0:
                if until is None:
                    self.timed_out = True
                    self.kill()
                return None
            if want is None and self.out_fd in self.closed and self.err_fd in self.closed:
                return None  # nothing left to wait for
            for fd, _ in self.poller.poll(min(left, 60) * 1000):  # no deadline yet: inf
                if fd == want:
                    return want
                self._copy(fd)

    def _watch(self, want: int | None) -> None:
        """Poll `want` (besides stdout and stderr) instead of the fd the last wait was for."""
        if self.watched is not None and self.watched not in self.closed:
            self.poller.unregister(self.watched)
        if want is not None and want not in self.closed:
            self.poller.register(want, select.POLLIN)
        self.watched = want

    def _copy(self, fd: int) -> bool:
        """Copy one read of stdout or stderr, up to the cap; False at its end."""
        data = os.read(fd, 1 << 16)
        if not data:
            self._close(fd)
            return False
        stream = self.streams[fd]
        room = self.cap - len(stream)
        stream += data[:max(room, 0)]
        self.truncated |= len(data) > room
        return True

    def _close(self, fd: int) -> None:
        if fd in self.streams or fd == self.watched:
            self.poller.unregister(fd)
        self.closed.add(fd)
        os.close(fd)

    def kill(self) -> None:
        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)  # PID 1 of its namespace: takes all along
        except ProcessLookupError:
            pass
        if self.weak:
            try:
                os.killpg(self.pid, signal.SIGKILL)  # weak mode: the child leads its own group
            except (ProcessLookupError, PermissionError):
                pass

    def finish(self, failure: str | None) -> tuple[str, str]:
        """Classify the run; `reap` then ends the child.

        A child that answers "exit" has flushed its output and ends cleanly: the run is
        classified at once and its exit is reaped after the caller has its result.
        """
        try:
            self._ask({"op": "exit"})
        except (ChildGone, CallError):
            self.reap()  # dead, killed or broken: its exit status tells what happened
        else:
            try:  # the kernel's CPU clock of its process: the child waits for `reap` before it exits
                self.cpu_s = time.clock_gettime(((~self.pid) << 3) | 2)
            except OSError:  # it died meanwhile after all
                self.reap()
            self._watch(None)
            for _ in range(64):  # what it wrote before answering (bounded: its threads may still write)
                ready = self.poller.poll(0)
                if not ready:
                    break
                for fd, _ in ready:
                    self._copy(fd)
        return self._classify(failure)

    def reap(self) -> None:
        """Wait for the child's exit (killing it at the deadline), kill what it left, collect."""
        if self.exit_status is not None:
            return
        os.close(self.calls)  # a child still reading sees the end and exits
        if not self.timed_out and self._wait(self.pidfd) is None:
            self.kill()
        status, utime, stime = struct.unpack("idd", self.zygote.recv(64))  # the zygote reaped it
        self.exit_status = status
        self.cpu_s = utime + stime if self.cpu_s is None else self.cpu_s
        self.kill()  # weak mode: whatever the code left running in its group
        self._wait(None, time.monotonic() + 0.2)  # what is still buffered in the pipes
        for fd in {self.out_fd, self.err_fd, self.replies, self.pidfd} - self.closed:
            self._close(fd)
        if self.cpus is not None:
            try:
                os.sched_setaffinity(0, self.cpus)
            except OSError:  # the CPUs changed meanwhile: pinned is only slower
                pass

    def _classify(self, failure: str | None) -> tuple[str, str]:
        status, cpu = self.exit_status or 0, self.cpu_s  # no exit status yet: it answered "exit"
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        kind = (self.reported or {}).get("type", "")
        if self.timed_out:
            return "timeout", "wall-clock deadline passed; the process tree was killed"
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= self.cpu_limit - 0.05):
            return "timeout", f"CPU time limit reached ({cpu:.2f} s)"
        if kind == "MemoryError" or b"MemoryError" in self.err[-2000:]:
            return "memory", failure or "MemoryError: the address-space limit was reached"
        if failure:
            return "error", failure
        if sig:
            return "killed", f"killed by signal {signal.Signals(sig).name}"
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 70:
            return "error", "the sandbox harness crashed (the code broke the interpreter): " + self.err[-300:].decode(errors="replace")
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
            return "error", f"exited with code {os.WEXITSTATUS(status)}"
        return "ok", ""


if __name__ == "__main__":
    serve(int(sys.argv[1]), namespaces="weak" not in sys.argv[2:])
