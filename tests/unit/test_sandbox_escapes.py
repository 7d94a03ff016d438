"""Escape battery: each attempt is contained, reported with the right exit reason, and leaves
the trainer process, other runs and the filesystem outside scratch untouched.

Real subprocesses and real limits. Every attempt runs against the sandbox as the OS allows it
and against its `weak` fallback (namespaces switched off). The filesystem and network attempts
need namespaces and are skipped in weak mode: they would succeed there, honestly (what weak
mode does guarantee is in test_sandbox_weak.py).
"""

import builtins
import os
import signal
import socket
import sys
import threading
import time
import uuid

import pytest

from envs.sandbox import Limits, Sandbox

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module", params=["as allowed", "weak"])
def box(request):
    with Sandbox(Limits(wall_s=3, cpu_s=3, memory_mb=256, procs=8), namespaces=request.param != "weak") as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def strong(box):
    if box.isolation["mode"] != "namespaces":
        pytest.skip(f"this OS gives only weak isolation: {box.isolation}")


@pytest.fixture
def outside(tmp_path):
    """A secret planted outside scratch, world-readable and root-only, and a path nobody may create."""
    public = tmp_path / "public_secret.txt"
    public.write_text("PUBLIC-SECRET")
    public.chmod(0o644)
    private = tmp_path / "root_secret.txt"
    private.write_text("ROOT-SECRET")
    private.chmod(0o600)
    tmp_path.chmod(0o755)
    return {"public": str(public), "private": str(private), "target": str(tmp_path / f"pwned-{uuid.uuid4().hex}")}


SIGINT_AT_START = signal.getsignal(signal.SIGINT)  # SIG_IGN already when started in the background


def still_healthy(box):
    """The trainer is untouched and the next run works normally."""
    assert builtins.len is len and "os" in sys.modules and signal.getsignal(signal.SIGINT) == SIGINT_AT_START
    r = box.run("def f(x):\n    return x + 1", entry="f", args=[41])
    assert r.ok and r.value == 42, r


def test_os_system_and_subprocess(box, strong, outside):
    code = f"""
import os, subprocess
def f():
    rc = os.system("echo owned > {outside['target']}")
    try:
        subprocess.run(["/bin/sh", "-c", "echo owned > {outside['target']}"])
        ran = True
    except OSError as e:
        ran = type(e).__name__
    return rc, ran
"""
    r = box.run(code, entry="f")
    assert r.ok and r.value[0] != 0 and r.value[1] == "FileNotFoundError"  # no shell exists in the sandbox
    assert not os.path.exists(outside["target"])
    still_healthy(box)


def test_socket_connect_to_a_local_server(box, strong):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(1.0)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    t = threading.Thread(target=accept)
    t.start()
    code = f"""
import socket
def f():
    try:
        s = socket.socket()  # refused outright by the seccomp filter, else it finds no network
        s.settimeout(1)
        s.connect(("127.0.0.1", {port}))
        s.sendall(b"exfiltrated")
        return "connected"
    except OSError as e:
        return type(e).__name__ + ": " + str(e)
"""
    r = box.run(code, entry="f")
    t.join()
    server.close()
    assert r.ok and r.value != "connected" and not accepted, (r, accepted)
    still_healthy(box)


def test_reading_files_outside_scratch(box, strong, outside):
    code = f"""
def f():
    out = []
    for path in ({outside['public']!r}, {outside['private']!r}, "/etc/passwd", "/proc/1/environ"):
        try:
            out.append(open(path).read())
        except OSError as e:
            out.append(type(e).__name__)
    return out
"""
    r = box.run(code, entry="f")
    assert r.ok and r.value == ["FileNotFoundError"] * 4
    assert "SECRET" not in r.stdout + r.stderr + str(r.value)


def test_writing_outside_scratch(box, strong, outside):
    code = f"""
import os
def f():
    results = []
    for path in ({outside['target']!r}, "/../../{os.path.basename(outside['target'])}"):
        try:
            open(path, "w").write("owned")
            results.append("wrote")
        except OSError as e:
            results.append(type(e).__name__)
    os.chdir("/")
    return results, os.listdir("/")
"""
    r = box.run(code, entry="f")
    assert r.ok and not os.path.exists(outside["target"])
    # "/" is the run's own scratch tmpfs: the write to "/../../name" landed there and vanished with the run
    assert r.value[0][0] == "FileNotFoundError" and set(r.value[1]) <= {os.path.basename(outside["target"])}


def test_fork_bomb(box):
    code = """
import os
print(os.getuid(), flush=True)
def f():
    while True:
        try:
            os.fork()
        except BaseException:
            pass
"""
    r = box.run(code, entry="f", limits=Limits(wall_s=1.5, cpu_s=3, procs=8))
    assert r.status == "timeout"
    uid = int(r.stdout)  # the run's own uid: the armed processes of later runs have others
    if uid != os.getuid():  # (weak mode without root runs as the trainer's own uid)
        time.sleep(0.2)
        stray = [p for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) == uid]
        assert not stray, f"processes left behind: {stray}"
    still_healthy(box)


def _uid_of(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return int(next(line for line in fh if line.startswith("Uid:")).split()[1])
    except (OSError, StopIteration):
        return -1


def test_allocating_8_gib(box):
    r = box.run("def f():\n    x = bytearray(8 << 30)\n    return len(x)", entry="f")
    assert r.status == "memory"
    r = box.run("def f():\n    x = [bytearray(64 << 20) for _ in range(128)]\n    return len(x)", entry="f")
    assert r.status == "memory"
    still_healthy(box)


def test_loop_that_catches_everything_and_ignores_signals(box):
    code = """
import signal
for s in (signal.SIGALRM, signal.SIGXCPU, signal.SIGTERM, signal.SIGINT):
    signal.signal(s, signal.SIG_IGN)
def f():
    while True:
        try:
            while True:
                pass
        except BaseException:
            pass
"""
    r = box.run(code, entry="f", limits=Limits(wall_s=1.0, cpu_s=5))
    assert r.status == "timeout" and r.wall_s < 3
    r = box.run(code, entry="f", limits=Limits(wall_s=10, cpu_s=1))  # the CPU rlimit ends it too
    assert r.status == "timeout" and "CPU" in r.error
    still_healthy(box)


def test_ctypes(box):
    code = """
import ctypes
libc = ctypes.CDLL(None)
def f():
    return libc.setuid(0), libc.unshare(0x40000000), libc.chroot(b"/..")
"""
    r = box.run(code, entry="f")
    if box.isolation["mode"] == "namespaces":
        assert r.ok and r.value == [-1, -1, -1]  # no privilege left to take back
    r = box.run("import ctypes\ndef f():\n    return ctypes.string_at(0)", entry="f")
    assert r.status == "killed" and "SIGSEGV" in r.error
    still_healthy(box)


def test_huge_stdout_is_capped(box):
    r = box.run("def f():\n    print('x' * (50 << 20))\n    return 'done'", entry="f",
                limits=Limits(output_bytes=1000))
    assert r.ok and r.value == "done" and len(r.stdout) == 1000 and r.truncated
    r = box.run("import sys\ndef f():\n    while True:\n        sys.stderr.write('y' * 65536)", entry="f",
                limits=Limits(wall_s=1, output_bytes=2000))
    assert r.status == "timeout" and len(r.stderr) == 2000 and r.truncated


def test_recursion_bomb(box):
    r = box.run("def f(n=0):\n    return f(n + 1)", entry="f")
    assert r.status == "error" and "RecursionError" in r.error
    r = box.run("import sys\nsys.setrecursionlimit(10**9)\ndef f(n=0):\n    return f(n + 1)", entry="f")
    assert r.status in ("killed", "memory", "error", "timeout")  # contained, whichever limit it meets first
    still_healthy(box)


def test_sys_modules_and_builtins_tampering(box):
    code = """
import builtins, sys, json
builtins.len = lambda x: 0
builtins.print = None
json.dumps = lambda *a, **k: 'forged'
sys.modules.clear()
def f():
    return [1, 2, 3]
"""
    r = box.run(code, entry="f")
    assert r.ok and r.value == [1, 2, 3]  # the harness bound what it needs before the code ran
    still_healthy(box)


def test_subclasses_walk(box, strong, outside):
    code = f"""
def f():
    found = []
    for cls in ().__class__.__base__.__subclasses__():
        if cls.__name__ == "_wrap_close":
            system = cls.__init__.__globals__["system"]
            found.append(system("cat {outside['private']} > /dev/null"))
            try:
                g = cls.__init__.__globals__
                found.append(g["read"](g["open"]({outside['public']!r}, g["O_RDONLY"]), 100))
            except OSError as e:
                found.append(type(e).__name__)
    return found
"""
    r = box.run(code, entry="f")
    assert r.ok and "SECRET" not in str(r.value) and "FileNotFoundError" in r.value
    still_healthy(box)


def test_sysv_ipc_that_would_outlive_the_run(box, strong):
    code = """
import ctypes
libc = ctypes.CDLL(None)
def f():
    return libc.shmget(0, 1 << 20, 0o1666), libc.msgget(0, 0o1666), libc.semget(0, 1, 0o1666)
"""
    r = box.run(code, entry="f")
    assert r.ok and r.value == [-1, -1, -1]  # nothing can be created, so nothing is left behind or shared
    still_healthy(box)


def test_killing_other_processes(box):
    code = "import os, signal\ndef f():\n    os.kill(-1, signal.SIGKILL)\n    return 'still here'"
    slow = {}

    def victim():
        slow["r"] = box.run("import time\ndef f():\n    time.sleep(0.8)\n    return 'survived'", entry="f")

    t = threading.Thread(target=victim)
    t.start()
    time.sleep(0.2)
    box.run(code, entry="f")
    t.join()
    assert slow["r"].ok and slow["r"].value == "survived"
    still_healthy(box)


def test_concurrent_runs_cannot_meet_over_an_abstract_unix_socket(box, strong):
    name = f"toolgym-{uuid.uuid4().hex}"
    listener = f"""
import socket
def f():
    try:
        s = socket.socket(socket.AF_UNIX)
    except PermissionError:
        return "no socket"  # the seccomp filter refuses every socket()
    s.bind("\\0{name}")
    s.listen(1)
    s.settimeout(1.5)
    try:
        s.accept()
        return "accepted"
    except OSError as e:
        return type(e).__name__
"""
    dialer = f"""
import socket, time
def f():
    time.sleep(0.3)  # the listener is bound by now
    try:
        s = socket.socket(socket.AF_UNIX)
    except PermissionError:
        return "no socket"
    try:
        s.connect("\\0{name}")
        return "connected"
    except OSError as e:
        return type(e).__name__
"""
    results = {}
    threads = [threading.Thread(target=lambda k=k, c=c: results.__setitem__(k, box.run(c, entry="f")))
               for k, c in (("listener", listener), ("dialer", dialer))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["listener"].ok and results["dialer"].ok, results
    filtered = box.isolation["syscalls"].startswith("seccomp filter")
    if filtered:  # neither gets as far as a socket
        assert results["dialer"].value == results["listener"].value == "no socket", results
    else:
        assert results["dialer"].value == "ConnectionRefusedError", results  # no such name in its namespace
        assert results["listener"].value in ("TimeoutError", "timeout"), results
    still_healthy(box)
