"""The runner's handle on one armed child: hands it its job, relays calls, watches its output and
deadline, kills and reaps it, and classifies how the run ended. Imported by the fork server by its bare name."""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import time

from isolation import _libc
from protocol import MAX_FRAME, CallError, ChildGone, clip, write_frame


def _fds(ancillary) -> list[int]:
    """The file descriptors passed in a recvmsg's ancillary data."""
    return [fd for level, kind, data in ancillary if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
            for fd in struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4])]


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
        self.frame_cap = MAX_FRAME  # the largest reply frame taken (the run's value_bytes, from `start`)
        self.error_cap = 4096  # characters of an error message the child reports (error_chars, from `start`)
        self.too_large = ""  # why a reply was refused for its size: the run ends at once, status too_large
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
        self.error_cap = limits["error_chars"]
        # the child's own caps: a value, or an error and its type of up to error_chars characters each (one
        # character escaped as JSON takes up to 12 bytes: a surrogate pair)
        self.frame_cap = min(max(limits["value_bytes"], 24 * limits["error_chars"]) + 1024, MAX_FRAME)
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
                if n > self.frame_cap:  # the harness sends a small error instead: code wrote to the pipe itself
                    self.too_large = f"reply of {n} bytes is larger than the limit ({self.frame_cap} bytes)"
                    self.kill()  # it is blocked writing the rest: waiting for it would last until the deadline
                    raise ChildGone
                if len(self.buf) >= 4 + n:
                    frame, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    try:
                        text = frame.decode()
                        reply, end = self.scan(text, 0)
                        if end != len(text):
                            raise ValueError("trailing data")
                        if "too_large" in reply:  # ends the run, whatever a driver catches: never a game lost
                            self.too_large = (f"return value too large: {int(reply['too_large'])} bytes as JSON "
                                              f"(limit: {int(reply['limit'])} bytes)")
                            self.kill()
                            raise ChildGone
                        if "error" in reply:
                            self.reported = reply
                            raise CallError(clip(str(reply["error"]), self.error_cap))
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
        if self.too_large:
            return "too_large", self.too_large
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
            return "error", ("the sandbox harness crashed (the code broke the interpreter): "
                             + self.err[-300:].decode(errors="replace"))
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
            return "error", f"exited with code {os.WEXITSTATUS(status)}"
        return "ok", ""

