"""Escapes of files and processes past the audit hook (ctypes, os.mkdir and friends, a symlink race): the
trainer's environment in /proc, files outside scratch, other processes of the trainer's uid, the scratch
size. Each fails in every mode this machine offers, for the reason the isolation report gives (namespaces:
the chroot and PID namespace; weak: Landlock). Run as root here and as `nobody` by test_sandbox_nonroot.py."""

import errno
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from envs.sandbox import Limits, Sandbox

LIBC = "import ctypes\nlibc = ctypes.CDLL(None, handle=ctypes.pythonapi._handle, use_errno=True)\n"  # past the hook


@pytest.fixture(scope="module", params=["as allowed", "weak"])
def box(request):
    with Sandbox(Limits(wall_s=5, cpu_s=5), namespaces=request.param != "weak") as sandbox:
        yield sandbox


def fenced(box) -> str:
    """What keeps a run's files in: the report must name it, or the test cannot hold."""
    iso = box.isolation
    if iso["mode"] == "namespaces":
        assert "chroot into a fresh size-capped tmpfs" in iso["filesystem"]
        return "namespaces"
    if not iso["landlock"]:
        pytest.skip(f"weak mode without Landlock does not fence files: {iso['not_protected']}")
    assert "files only beneath the scratch folder" in iso["filesystem"]
    return "landlock"


@pytest.fixture
def outside():
    """A folder anyone may enter and write in (pytest's tmp_path is in a 0700 folder a run's own uid could not
    enter anyway), with a world-readable file and one only the trainer's uid may read."""
    folder = Path(tempfile.mkdtemp(prefix="toolgym-outside-"))
    folder.chmod(0o777)  # only the sandbox keeps a run out
    public, private = folder / "public.txt", folder / "private.txt"
    public.write_text("PUBLIC-SECRET")
    public.chmod(0o644)
    private.write_text("PRIVATE-SECRET")
    private.chmod(0o600)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_reading_the_trainers_environ_and_files_through_ctypes(box, outside):
    how = fenced(box)
    code = LIBC + f"""
def f():
    out = []
    for path in (b"/proc/{os.getpid()}/environ", {str(outside / 'public.txt').encode()!r},
                 {str(outside / 'private.txt').encode()!r}):  # as root, a run's own uid may read only the first
        fd = libc.open(path, 0)
        out.append([fd, ctypes.get_errno()])
    return out
"""
    r = box.run(code, entry="f")
    want = errno.ENOENT if how == "namespaces" else errno.EACCES  # nothing there / Landlock says no
    assert r.ok and r.value == [[-1, want]] * 3, r


def test_writing_outside_scratch_with_mkdir_symlink_mkfifo(box, outside):
    fenced(box)
    code = f"""
import os
def f():
    out = []
    for name, make in (("dir", os.mkdir), ("link", lambda p: os.symlink("/etc/passwd", p)), ("fifo", os.mkfifo)):
        try:
            make({str(outside)!r} + "/made-" + name)
            out.append("made")
        except OSError as e:
            out.append(type(e).__name__)
    return out
"""
    r = box.run(code, entry="f")
    assert r.ok and "made" not in r.value, r
    assert sorted(p.name for p in outside.iterdir()) == ["private.txt", "public.txt"]


def test_a_symlink_race_against_the_audit_hook(box, outside):
    fenced(box)
    # One thread flips a link in scratch between a file of its own and a secret outside; the other opens the
    # link with open(), which the audit hook checks (realpath) just before the kernel opens it.
    code = f"""
import os, threading, time
def f():
    open("mine.txt", "w").write("mine")
    stop, got = [], set()
    def flip():
        while not stop:
            for target in ("mine.txt", {str(outside / 'public.txt')!r}):
                try:
                    os.symlink(target, "tmp-link")
                    os.replace("tmp-link", "link")
                except OSError:
                    pass
    t = threading.Thread(target=flip)
    t.start()
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        try:
            with open("link") as fh:
                got.add(fh.read())
        except OSError as e:
            got.add(type(e).__name__)
    stop.append(1)
    t.join()
    return sorted(got)
"""
    r = box.run(code, entry="f")
    if "can't start new thread" in r.error and box.isolation["mode"] == "weak" and os.geteuid() != 0:
        pytest.skip("RLIMIT_NPROC already counts the trainer's processes (weak mode without root): no thread to race")
    assert r.ok and "mine" in r.value and "PUBLIC-SECRET" not in r.value, r


def test_killing_another_process_of_the_trainers_uid(box):
    fenced(box)
    victim = subprocess.Popen(["sleep", "30"])
    try:
        r = box.run(LIBC + f"def f():\n    return libc.kill({victim.pid}, 9), ctypes.get_errno()", entry="f")
        time.sleep(0.1)
        assert victim.poll() is None, "the run killed a process outside it"
        assert r.ok and r.value[0] == -1 and r.value[1] in (errno.ESRCH, errno.EPERM), r  # not there / not its own
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()


def test_the_scratch_size_holds_whatever_the_files_sizes(box):
    iso = box.isolation
    if iso["mode"] != "namespaces":
        if box.namespaces:  # weak though namespaces were asked for: only where the kernel refused them
            assert "failed" in iso["why"], f"weak mode that the kernel did not force: {iso['why']}"
        assert any("filling the disk" in gap for gap in iso["not_protected"])
        pytest.skip("weak mode has no size-capped scratch, and says so (not_protected)")
    code = """
def f():
    written = 0
    try:
        for i in range(12):  # 96 MiB in 8 MiB files, each within file_mb
            with open(f"f{i}", "wb") as fh:
                fh.write(b"x" * (8 << 20))
            written += 8
    except OSError as e:
        return written, e.errno
    return written, 0
"""
    r = box.run(code, entry="f", limits=Limits(wall_s=10, cpu_s=10, memory_mb=256, scratch_mb=16, file_mb=8))
    assert r.ok and r.value[0] <= 16 and r.value[1] == errno.ENOSPC, r
