"""What a sandboxed child runs: lock itself down, wait for its job, serve calls to the model's function.

The fork server (`forkserver.py`) imports this module by its bare name, before it forks
anything, and its zygotes fork each child straight into `main`. Stdlib only and no `envs`
imports: the child is chrooted into an empty tmpfs and can import only what the fork server
loaded (or compiled for it: `OnDemand`); its siblings `isolation` and `landlock` load by bare name, as in
the fork server.

The child talks to its runner in JSON frames: a 4-byte big-endian length, then the JSON.
Everything the harness uses is bound, and the C JSON codec is used directly, before the
model's code runs: code that rebinds builtins, `json` or `sys.modules` cannot break it.
"""

from __future__ import annotations

import builtins
import ctypes
import importlib.util
import json
import os
import resource
import signal
import struct
import sys
import traceback

from isolation import CLONE_NEWUSER, _drop_capabilities, _libc, _map_own_ids
from landlock import restrict_to

PR_SET_PDEATHSIG = 1


def _jsonable(o, hasattr=hasattr, type=type, TypeError=TypeError):  # bound now: builtins may be rebound
    """What JSON does not know: numpy-like values via `.tolist()`; anything else is an error."""
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON-serializable")


# Made once in the fork server, inherited by every child.
PRISTINE_BUILTINS = dict(builtins.__dict__)
ENCODE = json.encoder.c_make_encoder({}, _jsonable, json.encoder.encode_basestring_ascii, None, ": ", ", ",
                                     False, False, True)
SCAN = json.scanner.c_make_scanner(json.JSONDecoder())


class OnDemand:
    """An importer of modules compiled in the fork server but run only by a child that imports them.

    Importing `threading` (for `subprocess`) in the fork server would register an after-fork
    hook that costs every child ~150 page faults, though few runs use either module.
    """

    def __init__(self, names: list[str]):
        self.code = {name: importlib.util.find_spec(name).loader.get_code(name) for name in names}

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in self.code else None

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module) -> None:
        exec(self.code[module.__name__], module.__dict__)  # noqa: S102 - stdlib code the fork server compiled


def main(pipes: dict, scratch: str, uid: int | None, state: dict) -> None:
    """Lock this fresh process down, then serve its run; nothing before the job depends on the run."""
    strong = state["isolation"]["mode"] == "namespaces"
    calls, replies = pipes["calls"][0], pipes["replies"][1]
    os.dup2(pipes["out"][1], 1)
    os.dup2(pipes["err"][1], 2)
    null_r, null_w = os.pipe()
    os.close(null_w)
    os.dup2(null_r, 0)  # stdin: empty
    lo = 3  # close every other fd, the zygote's socket included
    for fd in sorted({calls, replies, resource.getrlimit(resource.RLIMIT_NOFILE)[0]}):
        if fd > lo:
            os.closerange(lo, fd)
        lo = max(lo, fd + 1)
    if strong and uid is None:  # not root: a user namespace of the run's own, so that RLIMIT_NPROC counts
        ids = os.getuid(), os.getgid()  # this run's processes only (it counts per uid and user namespace)
        if _libc.unshare(CLONE_NEWUSER) != 0:  # before the chroot: the kernel refuses it to a chrooted process
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER)")
        _map_own_ids(*ids)
    if strong:
        os.chroot(scratch)
    os.chdir("/" if strong else scratch)
    if not strong:
        os.setsid()
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    elif strong:
        _drop_capabilities()  # those of its own user namespace, CAP_SYS_CHROOT among them
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # die with the zygote; after setuid, which clears it
    if not strong:
        if state["isolation"]["landlock"]:  # the kernel's fence; the audit hook stays, for its clearer messages
            restrict_to(scratch, state["isolation"]["landlock"])
        _install_audit_hook(os.path.realpath(scratch))
    _serve(calls, replies, state["base_vm"])


def _set_limits(limits: dict, base_vm: int) -> None:
    cpu = max(1, int(limits["cpu_s"] + 0.999))
    for res, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)),
                       (resource.RLIMIT_AS, (base_vm + limits["memory_mb"] * 2**20,) * 2),
                       (resource.RLIMIT_FSIZE, (limits["file_mb"] * 2**20,) * 2),
                       (resource.RLIMIT_NPROC, (limits["procs"],) * 2),
                       (resource.RLIMIT_NOFILE, (64, 64)),
                       (resource.RLIMIT_CORE, (0, 0))):
        resource.setrlimit(res, value)


def _install_audit_hook(scratch: str) -> None:
    """Weak mode only: Python-level blocks; ctypes or a C extension can get around them."""
    blocked = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.fork", "os.kill",
               "ctypes.dlopen")

    # every name the hook uses is bound now, as defaults: model code could rebind builtins or `os` attributes
    def hook(event, args, isinstance_=isinstance, realpath=os.path.realpath, fsdecode=os.fsdecode, sep=os.sep,
             PermissionError_=PermissionError, str_=str, bytes_=bytes):
        if event.startswith(blocked):
            raise PermissionError_(f"{event} is blocked in the sandbox")
        if event == "open" and isinstance_(args[0], (str_, bytes_)):
            path = realpath(fsdecode(args[0]))
            if path != scratch and not path.startswith(scratch + sep):
                raise PermissionError_(f"reading or writing {args[0]!r} outside the scratch directory is blocked")

    sys.addaudithook(hook)


def _define(code: str, entry: str, send, report, BaseExc, callable_=callable, sorted_=sorted, NameError_=NameError):
    """Run the model's code once and answer with its entry function's readiness; the function, or None."""
    scope = {"__name__": "__sandbox__"}
    try:
        exec(compile(code, "<model code>", "exec"), scope)  # noqa: S102 - running the model's code is the point
        fn = scope.get(entry) if entry else None
        if entry and not callable_(fn):
            names = sorted_(k for k, v in scope.items() if callable_(v) and not k.startswith("__"))
            raise NameError_(f"no function named {entry!r} is defined (defined: {', '.join(names) or 'none'})")
    except BaseExc as e:
        report(e, "while defining the code")
        return None
    send({"value": None})
    return fn


def _answer(fn, entry, recv, send, report, flush_out, flush_err, exit_, BaseExc, bytearray_, bytes_, len_) -> None:
    """Answer the runner's calls until "exit", then flush and leave. Runs after the model's code: every
    name it uses is a parameter, bound by `_serve` before that code ran (none is looked up at call time)."""
    staged: list = []
    while True:
        msg = recv()
        op = msg["op"]
        try:
            if op == "call":
                send({"value": fn(*msg["args"])})
            elif op == "stage":
                staged = msg["args"]
                send({"value": None})
            elif op == "run_staged":
                fn(*staged)
                send({"value": None})
            elif op == "flush":
                junk = bytearray_(32 << 20)
                junk[::4096] = bytes_(len_(junk[::4096]))
                del junk
                send({"value": None})
            else:
                break
        except BaseExc as e:
            report(e, f"in {entry}()")
    try:
        flush_out()
        flush_err()
    except BaseExc:
        pass
    send({"value": None})  # "exit" answered: all it printed is in the pipes
    recv()  # the runner reads our CPU clock, then closes the pipe
    exit_(0)


def _serve(calls: int, replies: int, base_vm: int) -> None:
    """Take the job (code, entry, allowed imports, limits), define the code, answer calls until "exit"."""
    join, unpack, pack, write, read, exit_ = "".join, struct.unpack, struct.pack, os.write, os.read, os._exit
    fmt_exc, flush_out, flush_err = traceback.format_exception_only, sys.stdout.flush, sys.stderr.flush
    BaseExc, MemoryExc, len_, sum_, map_, isinstance_ = BaseException, MemoryError, len, sum, map, isinstance
    bytes_, bytearray_, type_, str_ = bytes, bytearray, type, str
    encode, scan, builtins_dict, pristine = ENCODE, SCAN, builtins.__dict__, PRISTINE_BUILTINS
    answer = _answer  # bound now: model code may rebind module globals once it runs
    pending = [b""]  # what was read beyond the last frame

    def recv():
        data = pending[0]
        while len_(data) < 4 or len_(data) < 4 + unpack(">I", data[:4])[0]:
            chunk = read(calls, 1 << 16)
            if not chunk:
                exit_(0)
            data += chunk
        n = 4 + unpack(">I", data[:4])[0]
        pending[0] = data[n:]
        return scan(data[4:n].decode(), 0)[0]

    req = recv()
    value_cap, error_cap = req["limits"]["value_bytes"], req["limits"]["error_chars"]
    keep = max(error_cap - 48, 0)

    def clip(text: str) -> str:  # as protocol.clip; cutting here keeps a huge message off the pipe
        return text if len_(text) <= error_cap else f"{text[:keep]}[... {len_(text) - keep} more characters cut]"

    def send(obj) -> None:
        try:
            chunks = encode(obj, 0)  # ASCII (non-ASCII is escaped): characters are bytes
        except BaseExc as e:
            kind = "MemoryError" if isinstance_(e, MemoryExc) else "TypeError"
            chunks = encode({"error": clip(f"return value is not JSON-serializable: {str_(e)}"), "type": kind}, 0)
        size = sum_(map_(len_, chunks))
        if size > value_cap and "value" in obj:  # a small frame now, not a huge one that stalls the pipe
            chunks = encode({"too_large": size, "limit": value_cap}, 0)  # a key only the harness sends
        data = join(chunks).encode()
        data = pack(">I", len_(data)) + data
        while data:
            data = data[write(replies, data):]

    def report(e: BaseException, where: str) -> None:
        builtins_dict.update(pristine)  # traceback formatting needs the real builtins
        text = join(fmt_exc(type_(e), e)).strip()
        send({"error": clip(f"{where}: {text}"), "type": clip(type_(e).__name__)})

    _set_limits(req["limits"], base_vm)
    _gate_imports(req["allowed_imports"])
    fn = _define(req["code"], req["entry"], send, report, BaseExc)
    answer(fn, req["entry"], recv, send, report, flush_out, flush_err, exit_, BaseExc, bytearray_, bytes_, len_)


def _gate_imports(allowed: list[str] | None) -> None:
    """Refuse top-level imports outside `allowed` (None: no gate); a courtesy, not a security boundary."""
    if allowed is None:
        return
    real_import, allowed_set = builtins.__import__, frozenset(allowed)

    def gated_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name.partition(".")[0] not in allowed_set:
            names = ", ".join(sorted(allowed_set)) or "none"
            raise ImportError(f"import of {name!r} is not allowed (allowed: {names})")
        return real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = gated_import
    PRISTINE_BUILTINS["__import__"] = gated_import
