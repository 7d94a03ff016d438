"""Escapes through system calls that no run needs: the trainer's keyring, sockets made through ctypes, ptrace,
other processes' memory, io_uring, new namespaces. Each is refused by the sandbox's seccomp filter with EPERM,
in every mode, and the isolation report says so. Real subprocesses, real calls (x86-64 numbers)."""

import ctypes
import errno
import os
import platform
import socket
import uuid

import pytest

from envs.sandbox import Limits, Sandbox

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="the calls are made by their x86-64 numbers")
ADD_KEY, KEYCTL, KEY_SPEC_SESSION_KEYRING, KEYCTL_SEARCH, KEYCTL_READ = 248, 250, -3, 10, 11
# Model code reaches libc past the weak mode's audit hook (which blocks ctypes.dlopen) through the handle
# the interpreter already holds, with errno kept.
LIBC = "import ctypes\nlibc = ctypes.CDLL(None, handle=ctypes.pythonapi._handle, use_errno=True)\n"
MODES = ["as allowed", "weak"]


@pytest.fixture(scope="module", params=MODES)
def box(request):
    with Sandbox(Limits(wall_s=5, cpu_s=5), namespaces=request.param != "weak") as sandbox:
        yield sandbox


def _syscall(*args):
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.syscall(*args)
    return result, ctypes.get_errno()


def test_the_report_names_the_filter(box):
    assert box.isolation["syscalls"].startswith("seccomp filter (")
    for what in ("kernel keyrings", "sockets of any family", "other processes' memory"):
        assert what in box.isolation["syscalls"]


@pytest.mark.parametrize("mode", MODES)
def test_the_trainers_session_keyring_can_be_neither_read_nor_written(mode):
    name, secret = f"toolgym-test-{uuid.uuid4().hex}", b"KEYRING-SECRET"
    key, err = _syscall(ADD_KEY, b"user", name.encode(), secret, len(secret), KEY_SPEC_SESSION_KEYRING)
    if key < 0:
        pytest.skip(f"this process cannot add a key to its session keyring: {os.strerror(err)}")
    left = f"toolgym-left-{uuid.uuid4().hex}"
    code = LIBC + f"""
def f():
    found = libc.syscall({KEYCTL}, {KEYCTL_SEARCH}, {KEY_SPEC_SESSION_KEYRING}, b"user", {name.encode()!r}, 0)
    search_errno = ctypes.get_errno()
    buf = ctypes.create_string_buffer(64)
    n = libc.syscall({KEYCTL}, {KEYCTL_READ}, found, buf, 64) if found > 0 else -1
    added = libc.syscall({ADD_KEY}, b"user", {left.encode()!r}, b"x", 1, {KEY_SPEC_SESSION_KEYRING})
    return found, search_errno, buf.raw[:max(n, 0)].decode(), added, ctypes.get_errno()
"""
    try:  # started after the key is there: its processes share this session keyring
        with Sandbox(Limits(wall_s=5, cpu_s=5), namespaces=mode != "weak") as box:
            r = box.run(code, entry="f")
        assert r.ok and r.value == [-1, errno.EPERM, "", -1, errno.EPERM], r
        assert _syscall(KEYCTL, KEYCTL_SEARCH, KEY_SPEC_SESSION_KEYRING, b"user", left.encode(), 0)[0] == -1
    finally:
        _syscall(KEYCTL, 21, key, KEY_SPEC_SESSION_KEYRING)  # KEYCTL_UNLINK


def test_sockets_made_through_ctypes_are_refused(box, tmp_path):
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(1)
    path = str(tmp_path / "s.sock")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(path)
    unix.listen(1)
    os.chmod(path, 0o777)
    tmp_path.chmod(0o755)
    code = LIBC + f"""
import struct
def f():
    out = []
    for family, address in ((2, struct.pack("=HH4s8x", 2, {socket.htons(tcp.getsockname()[1])}, bytes([127, 0, 0, 1]))),
                            (1, struct.pack("=H108s", 1, {path.encode()!r}))):
        fd = libc.socket(family, 1, 0)
        out.append([fd, ctypes.get_errno()])
        if fd >= 0:
            out[-1].append(libc.connect(fd, address, len(address)))
    return out
"""
    r = box.run(code, entry="f")
    accepted = []
    for server in (tcp, unix):  # a connect that got through is queued by now: take it without waiting
        server.setblocking(False)
        try:
            accepted.append(server.accept())
        except BlockingIOError:
            pass
        server.close()
    assert r.ok and r.value == [[-1, errno.EPERM], [-1, errno.EPERM]] and not accepted, (r, accepted)
    r = box.run(LIBC + "def f():\n    return libc.socketpair(1, 1, 0, (ctypes.c_int * 2)())", entry="f")
    assert r.ok and r.value == 0, r  # a pair of its own (AF_UNIX) reaches nobody: allowed


def test_ptrace_other_processes_memory_io_uring_and_new_namespaces_are_refused(box):
    code = LIBC + """
def f():
    out = {}
    buf, word = ctypes.create_string_buffer(8), ctypes.c_long(7)
    local = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 8)
    remote = (ctypes.c_void_p * 2)(ctypes.addressof(word), 8)
    params = ctypes.create_string_buffer(120)
    for name, args in (("ptrace", (101, 0, 0, 0, 0)),  # PTRACE_TRACEME: succeeds wherever ptrace is allowed
                       ("process_vm_readv", (310, libc.getpid(), local, 1, remote, 1, 0)),
                       ("io_uring_setup", (425, 4, params)), ("bpf", (321, 0, params, 72)),
                       ("unshare(CLONE_NEWUSER)", (272, 0x10000000)),
                       ("clone(CLONE_NEWUSER)", (56, 0x10000000 | 17, 0, 0, 0, 0))):
        result = libc.syscall(*args)
        if result == 0 and name.startswith("clone"):
            libc._exit(0)  # the new process (the syscall returned twice)
        out[name] = [result, ctypes.get_errno()]
    return out
"""
    r = box.run(code, entry="f")
    assert r.ok, r
    assert r.value == {name: [-1, errno.EPERM] for name in r.value} and len(r.value) == 6, r.value


def test_without_a_binding_the_report_says_no_filter_and_weak_mode_counts_it(monkeypatch):
    import sys

    from envs.sandbox.syscalls import compile_filters

    for name in ("seccomp", "pyseccomp"):
        monkeypatch.setitem(sys.modules, name, None)  # as if neither were installed
    compile_filters.cache_clear()
    try:
        with Sandbox(namespaces=False) as box:
            iso = box.isolation
            r = box.run(LIBC + "def f():\n    return libc.socket(1, 1, 0) >= 0", entry="f")
        assert iso["syscalls"].startswith("NO seccomp filter (neither python3-seccomp nor pyseccomp is installed)")
        assert any("no seccomp filter" in gap for gap in iso["not_protected"])
        assert r.ok and r.value is True  # and indeed nothing refuses the socket: the report is not just words
    finally:
        compile_filters.cache_clear()
