"""The sandbox started by a user without root: it must still build its namespaces (in a user namespace of its
own), and the escape batteries must pass there. Root drops to `nobody` in a child process to check it."""

import ctypes
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BATTERIES = ["tests/unit/test_sandbox_escapes.py", "tests/unit/test_sandbox_escapes_files.py",
             "tests/unit/test_sandbox_syscalls.py", "tests/unit/test_sandbox_sizes.py", "tests/unit/test_sandbox.py",
             "tests/unit/test_sandbox_weak.py"]
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 0x1000, 0x2000, 0x4000, 0x40000
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")


def _reachable(paths: list[str]) -> None:
    """In this process's own mount namespace, make each path traversable for any user: a folder on the way
    that others may not enter (/root, 0700, holding the interpreter) is covered by an empty tmpfs into which
    only the folders on the way are bound back. Nothing outside this process changes."""
    libc = ctypes.CDLL(None, use_errno=True)

    def mount(source, target, fstype, flags, data=None):
        if libc.mount(source, str(target).encode(), fstype, flags, data) != 0:
            raise OSError(ctypes.get_errno(), f"mount {target}")

    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare")
    mount(b"none", "/", None, MS_REC | MS_PRIVATE)
    blocked: dict[Path, set[str]] = {}
    for path in map(Path, paths):
        for parent in path.parents:
            if parent != Path("/") and not os.stat(parent).st_mode & 0o001:
                blocked.setdefault(parent, set()).add(path.relative_to(parent).parts[0])
    for folder, kept in sorted(blocked.items()):
        holding = {name: Path(tempfile.mkdtemp()) for name in kept}
        for name, hold in holding.items():
            mount(str(folder / name).encode(), hold, None, MS_BIND | MS_REC)
        mount(b"tmpfs", folder, b"tmpfs", 0, b"mode=0755")
        for name, hold in holding.items():
            (folder / name).mkdir()
            mount(str(hold).encode(), folder / name, None, MS_MOVE)


def _as_nobody(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    nobody = pwd.getpwnam("nobody")
    paths = [os.path.realpath(sys.executable), sys.prefix, sys.base_prefix, str(REPO)]

    def drop():
        _reachable(paths)
        os.setgroups([])
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    env = {"PATH": os.environ.get("PATH", ""), "HOME": tempfile.gettempdir(), "LANG": "C.UTF-8"}
    return subprocess.run(argv, preexec_fn=drop, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_without_root_the_sandbox_builds_its_namespaces_in_a_user_namespace():
    script = ("import json, os\nfrom envs.sandbox import Sandbox\nwith Sandbox() as box:\n"
              "    r = box.run('import os\\ndef f():\\n    return os.getuid(), os.listdir(\"/\")', entry='f')\n"
              "    print(json.dumps([os.getuid(), box.isolation, r.status, r.value, r.isolation]))")
    out = _as_nobody([sys.executable, "-c", script], timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    uid, isolation, status, value, mode = json.loads(out.stdout.splitlines()[-1])
    assert uid == pwd.getpwnam("nobody").pw_uid and isolation["mode"] == mode == "namespaces", isolation
    assert "user namespace per run" in isolation["user"] and isolation["syscalls"].startswith("seccomp filter")
    assert status == "ok" and value == [uid, []]  # its own uid, and nothing but its empty scratch to see


def test_the_escape_batteries_pass_without_root():
    basetemp = os.path.join(tempfile.gettempdir(), f"toolgym-nobody-{uuid.uuid4().hex}")  # pytest makes it, as nobody
    try:
        out = _as_nobody([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                          "--basetemp", basetemp, *BATTERIES], timeout=900)
    finally:
        shutil.rmtree(basetemp, ignore_errors=True)
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:]
    assert out.returncode == 0 and " passed" in summary and "failed" not in summary, out.stdout[-6000:]
