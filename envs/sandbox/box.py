"""Run model-written Python in a separate, locked-down process, thousands of times per step.

    box = Sandbox()
    result = box.run("def f(x):\\n    return x * 2", entry="f", args=[21])
    result.status, result.value  # ("ok", 42)

Every run gets a fresh process forked from a warm fork server (`envs/sandbox/forkserver.py`),
never reused after model code ran in it. The process has CPU-time, address-space,
file-size and process-count rlimits, a wall-clock deadline that kills its whole process
tree, no network, a private scratch directory as its whole filesystem, an empty
environment, capped stdout/stderr and exception text, and a cap on the return value (a
larger one ends the run at once, status "too_large"). Which of these the OS allowed is in
`Sandbox.isolation` and in every result's `isolation` ("namespaces" or "weak");
`Sandbox(namespaces=False)` forces "weak". Where namespaces were asked for but the OS gives only
weak isolation, `run` refuses (`WeakSandboxRefused`) unless weak was chosen (`allow_weak`, the run
config's `env.sandbox_allow_weak`); a weak sandbox warns once per process, loudly, of what it leaves
open. Every mode runs under a seccomp filter (`syscalls.py`). The process is forked and locked down
before the run is asked for, so a run costs about a millisecond of its caller's time.

A run can also hand the model's function to a trusted *driver*, a function in one of the fork
`protocol.DRIVERS` (e.g. `g2048/rules.py:play_games`, a path under envs/) that runs outside the sandbox
and calls the model's function once per move or test input. Game state, inputs,
references and timings stay on the trusted side, so the model's code cannot fake them.

Nothing here imports torch; model code never runs in the calling process.
"""

from __future__ import annotations

import array
import ast
import atexit
import json
import os
import socket
import subprocess
import sys
import threading
import warnings
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Self

from envs.base import RunStop
from envs.sandbox.protocol import MAX_FRAME, check_driver, read_frame, write_frame
from envs.sandbox.syscalls import compile_filters

STATUSES = ("ok", "timeout", "memory", "too_large", "killed", "error")
SPARE_RUNNERS = 2  # idle runners kept beyond the busy ones: each re-arms while the others run
STDLIB_SAFE = ("math", "cmath", "random", "itertools", "functools", "collections", "heapq", "bisect", "array",
               "operator", "statistics", "fractions", "decimal", "copy", "string", "typing", "dataclasses", "re")


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0  # whole run, including every driver call
    cpu_s: float = 10.0
    memory_mb: int = 512  # address space on top of the interpreter's own
    file_mb: int = 8  # largest file the code may write
    scratch_mb: int = 16  # the whole scratch filesystem
    procs: int = 8  # processes and threads of the run's uid
    output_bytes: int = 64 * 1024  # each of stdout and stderr
    value_bytes: int = 16 << 20  # a return value as JSON; larger ones end the run at once as "too_large"
    error_chars: int = 4096  # an exception's text; the rest is cut, with a marker saying how much

    def __post_init__(self):
        if not 0 < self.value_bytes <= MAX_FRAME // 2 or self.error_chars < 64:  # 64: room for the cut marker
            raise ValueError(f"Limits: value_bytes must be in 1..{MAX_FRAME // 2} and error_chars >= 64, got "
                             f"value_bytes={self.value_bytes}, error_chars={self.error_chars}")


@dataclass
class Result:
    status: str  # ok | timeout | memory | too_large | killed | error
    value: Any = None
    stdout: str = ""
    stderr: str = ""
    error: str = ""
    truncated: bool = False  # stdout or stderr hit the cap
    cpu_s: float = 0.0
    wall_s: float = 0.0
    isolation: str = ""  # "namespaces" or "weak"; see Sandbox.isolation for the details

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class _Server:
    proc: subprocess.Popen
    sock: socket.socket
    isolation: dict
    idle: deque = field(default_factory=deque)  # runner sockets, oldest (and so surely armed) first

    def close(self) -> None:
        self.sock.close()  # the server exits; each runner exits once its socket closes
        while self.idle:
            self.idle.popleft().close()


class Sandbox:
    """A warm fork server that runs untrusted code, one fresh process per run; thread-safe.

    Each concurrent caller gets a runner that keeps its next process armed (forked, in
    its namespaces, chrooted, unprivileged) before the run is asked for. With
    `namespaces=False` the sandbox runs in "weak" mode even where namespaces would work
    (`isolation` says what that leaves in force).
    """

    def __init__(self, limits: Limits | None = None, *, namespaces: bool = True, allow_weak: bool | None = None):
        self.limits = limits or Limits()
        self.namespaces = namespaces
        # Weak mode where namespaces were asked for runs model code only when chosen knowingly: here, or by the
        # run config's env.sandbox_allow_weak (which sets ALLOW_WEAK_VAR, so that env worker processes see it).
        self.allow_weak = os.environ.get(ALLOW_WEAK_VAR) == "1" if allow_weak is None else allow_weak
        self._lock = threading.Lock()
        self._server: _Server | None = None

    @property
    def isolation(self) -> dict:
        """The mechanisms in force: network, filesystem, processes, user; mode "namespaces" or "weak"."""
        with self._lock:
            return dict(self._ensure().isolation)

    def run(self, code: str, entry: str | None = None, args: list | tuple = (), *, driver: str | None = None,
            driver_args: dict | None = None, limits: Limits | None = None,
            allowed_imports: list[str] | tuple[str, ...] | None = None) -> Result:
        """Run `code`, then call `entry(*args)` (or hand `entry` to `driver`); never raises for bad code.

        `allowed_imports` is a runtime gate on top-level imports (None = whatever the
        sandbox has); it is a courtesy, not a security boundary: check code statically
        with `imports_outside` as well.
        """
        if driver and not entry:
            raise ValueError(f"driver {driver!r} needs an entry function to drive")
        if driver:
            check_driver(driver)
        limits = limits or self.limits
        request = {"code": code, "entry": entry, "args": list(args), "driver": driver,
                   "driver_args": driver_args or {}, "limits": vars(limits),
                   "allowed_imports": None if allowed_imports is None else list(allowed_imports)}
        while True:  # a runner that died while idle never got the request: take the next (a new one takes it)
            server, runner = self._take_runner()
            try:
                write_frame(runner.fileno(), request)
                break
            except OSError:
                runner.close()
        try:
            reply = read_frame(runner.fileno())  # the runner always answers by the deadline (plus its grace)
        except (EOFError, OSError, ValueError) as e:
            runner.close()
            return Result("killed", error=f"the sandbox runner died ({type(e).__name__}: {e})",
                          isolation=server.isolation["mode"])
        with self._lock:
            if self._server is server:
                server.idle.append(runner)
                runner = None
        if runner:  # the sandbox was closed meanwhile
            runner.close()
        return Result(**reply)

    def _refuse_unchosen_weak(self, isolation: dict) -> None:
        if isolation["mode"] == "weak" and self.namespaces and not self.allow_weak:
            raise WeakSandboxRefused(
                f"the sandbox could only start in weak mode ({isolation['why']}), which does not protect against "
                f"{'; '.join(isolation['not_protected'])}. Refusing "
                f"to run model code: set env.sandbox_allow_weak: true in the run config (or Sandbox(allow_weak=True)"
                f", or {ALLOW_WEAK_VAR}=1) to accept that, or run where user namespaces are allowed")

    def close(self) -> None:
        with self._lock:
            if self._server:
                self._server.close()
                try:
                    self._server.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._server.proc.kill()
                self._server = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the fork server and its runners -------------------------------------------------

    def _ensure(self) -> _Server:
        if self._server is None or self._server.proc.poll() is not None:
            if self._server:
                self._server.close()
            self._server = _start_server(self.namespaces)
            if self._server.isolation["mode"] == "weak" and (self.allow_weak or not self.namespaces):
                _warn_weak_once(self._server.isolation)
        return self._server

    def _take_runner(self) -> tuple[_Server, socket.socket]:
        """The longest-idle runner while spares remain, else a new one."""
        with self._lock:
            for attempt in (0, 1):
                server = self._ensure()
                self._refuse_unchosen_weak(server.isolation)  # before any runner is armed for model code
                if len(server.idle) >= SPARE_RUNNERS:
                    return server, server.idle.popleft()
                ours, theirs = socket.socketpair()
                try:
                    server.sock.sendmsg([b"r"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                  array.array("i", [theirs.fileno()]))])
                    return server, ours
                except OSError:
                    ours.close()
                    if attempt:
                        raise
                    server.close()
                    self._server = None  # it died: start a new one
                finally:
                    theirs.close()



class WeakSandboxRefused(RunStop):
    """Only weak isolation could be had, and nobody chose it: no model code runs."""


ALLOW_WEAK_VAR = "TOOLGYM_SANDBOX_ALLOW_WEAK"
_warned: list[bool] = []


def _warn_weak_once(isolation: dict) -> None:
    """Once per process, loudly: what a weak sandbox leaves open (the seccomp filter, if in force, still holds)."""
    if not _warned:
        _warned.append(True)
        warnings.warn(f"SANDBOX IN WEAK MODE ({isolation['why']}): it does not protect against "
                      f"{'; '.join(isolation['not_protected'])}. In force: {isolation['filesystem']}; "
                      f"{isolation['syscalls']}", WeakSandboxWarning, stacklevel=3)


class WeakSandboxWarning(UserWarning):
    pass


def _start_server(namespaces: bool) -> _Server:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    script = Path(__file__).with_name("forkserver.py")
    env = {"HOME": "/", "PATH": "/nonexistent", "LANG": "C.UTF-8"}  # what model code will see
    filters = json.dumps(compile_filters())  # compiled here: the fork server must not import the binding
    argv = [sys.executable, "-E", "-S", str(script), str(theirs.fileno()), filters] + ([] if namespaces else ["weak"])
    proc = subprocess.Popen(argv, pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, cwd="/")
    theirs.close()
    hello = ours.recv(4096)
    if not hello:
        raise RuntimeError(f"the sandbox fork server failed to start (exit code {proc.wait()})")
    server = _Server(proc, ours, json.loads(hello))
    atexit.register(server.close)
    return server


_default: Sandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> Sandbox:
    """The process-wide sandbox that environments share (one fork server per trainer process)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Sandbox()
        return _default


# ---------------------------------------------------------------------------------------
# Static checks, shared by the envs and the reward functions


def parse_function(code: str, name: str) -> str | None:
    """Why `code` does not define a function `name`, or None when it does."""
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        return f"syntax error on line {e.lineno}: {e.msg}"
    if not any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name for n in tree.body):
        defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        return f"no top-level function named {name!r} (defined: {', '.join(defined) or 'none'})"
    return None


def imports_outside(code: str, allowed: list[str] | tuple[str, ...]) -> list[str]:
    """Modules `code` imports that are not in `allowed`; also `__import__`/`importlib` tricks.

    Unsloth's "no cheating" check: the model must write the algorithm, not import it.
    """
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    allowed_set, bad = set(allowed), []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [("." * node.level) + (node.module or "")]
        elif isinstance(node, ast.Name) and node.id in ("__import__", "importlib", "eval", "exec", "compile"):
            names = [node.id + "()"]
        elif isinstance(node, ast.Attribute) and node.attr in ("__subclasses__", "__globals__", "__builtins__"):
            names = ["." + node.attr]
        for name in names:
            if name.partition(".")[0] not in allowed_set and name not in bad:
                bad.append(name)
    return bad


def extract_code(text: str) -> str:
    """The Python code in a model reply: the last ```python fenced block, else the text itself."""
    import re

    blocks = re.findall(r"```(?:python|py)?\s*\n(.*?)```", text, flags=re.DOTALL)
    return (blocks[-1] if blocks else text).strip("\n")


__all__ = ["ALLOW_WEAK_VAR", "STATUSES", "STDLIB_SAFE", "Limits", "Result", "Sandbox", "WeakSandboxRefused",
           "WeakSandboxWarning", "default_sandbox", "extract_code", "imports_outside", "parse_function", "replace"]
