"""The weak fallback (no namespaces, forced here with `namespaces=False`): it says what is in force,
and holds to it. The OS limits (rlimits, deadline, output caps, a fresh scratch cwd, a minimal
environment, an unprivileged uid when started as root) are real; the network, filesystem and
process blocks are an audit hook, which the report says ctypes can bypass.
"""

import os
import time
from pathlib import Path

import pytest

from envs.sandbox import Limits, Sandbox


@pytest.fixture(scope="module")
def box():
    with Sandbox(Limits(wall_s=3, cpu_s=3, memory_mb=256), namespaces=False) as sandbox:
        yield sandbox


def test_report_says_weak_and_what_is_bypassable(box):
    iso = box.isolation
    assert iso["mode"] == "weak" and iso["why"] == "namespaces switched off"
    assert {"network", "filesystem", "processes", "ipc", "user"} <= set(iso)
    for mechanism in ("network", "filesystem", "processes"):
        assert "audit hook" in iso[mechanism] and "ctypes" in iso[mechanism] and "bypass" in iso[mechanism]
    if iso["landlock"]:  # the kernel fences the files in, whatever ctypes does
        assert f"Landlock (ABI {iso['landlock']}): files only beneath the scratch folder" in iso["filesystem"]
    else:
        assert "not hidden" in iso["filesystem"]
    assert iso["not_protected"] and "filling the disk" in iso["not_protected"][0]
    escapes = "setsid() escapee too" if os.geteuid() == 0 else "setsid() escapes it"
    assert escapes in iso["processes"], iso["processes"]
    assert "outlive the run" in iso["ipc"]
    r = box.run("def f():\n    return 1", entry="f")
    assert r.ok and r.value == 1 and r.isolation == "weak"


def test_os_limits_hold(box):
    r = box.run("import time\ndef f():\n    time.sleep(30)", entry="f", limits=Limits(wall_s=0.5))
    assert r.status == "timeout"
    r = box.run("def f():\n    while True:\n        pass", entry="f", limits=Limits(wall_s=10, cpu_s=1))
    assert r.status == "timeout" and "CPU" in r.error
    assert box.run("def f():\n    return len(bytearray(1 << 30))", entry="f").status == "memory"
    r = box.run("def f():\n    print('x' * 100000)\n    return 'done'", entry="f", limits=Limits(output_bytes=100))
    assert r.ok and len(r.stdout) == 100 and r.truncated


def test_fresh_scratch_cwd_and_minimal_environment(box, monkeypatch):
    monkeypatch.setenv("TOOLGYM_TEST_SECRET", "hunter2")
    code = "import os\ndef f():\n    open('note.txt', 'w').write('hi')\n" \
           "    return os.getcwd(), os.listdir('.'), dict(os.environ)"
    first, second = box.run(code, entry="f"), box.run(code, entry="f")
    assert first.ok and second.ok and first.value[1] == second.value[1] == ["note.txt"]  # each starts empty
    assert first.value[0] != second.value[0] and first.value[0] != os.getcwd()
    for _ in range(50):  # removed once its run is over (just after the result is sent)
        if not os.path.exists(first.value[0]):
            break
        time.sleep(0.05)
    assert not os.path.exists(first.value[0])
    assert "TOOLGYM_TEST_SECRET" not in first.value[2] and "hunter2" not in str(first.value[2])


def test_python_level_blocks(box, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET")
    code = f"""
import os, socket, subprocess
def f():
    out = []
    for attempt in (lambda: socket.socket(), lambda: open({str(secret)!r}).read(),
                    lambda: open({str(secret).encode()!r}).read(), lambda: os.system("true"),
                    lambda: subprocess.run(["true"]), lambda: os.fork(), lambda: os.kill(os.getppid(), 9)):
        try:
            out.append(repr(attempt()))
        except PermissionError as e:
            out.append(str(e))
    return out
"""
    r = box.run(code, entry="f")
    assert r.ok and len(r.value) == 7 and all("blocked" in v for v in r.value), r.value
    assert "SECRET" not in str(r.value)


def test_the_file_block_holds_when_code_rebinds_what_the_hook_calls(box, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET")
    code = f"""
import builtins, os
def f():
    builtins.isinstance = lambda *a: False  # the hook would skip every path
    os.path.realpath = lambda p: os.getcwd()  # or take every path for the scratch folder
    try:
        return open({str(secret)!r}).read()
    except PermissionError as e:
        return str(e)
"""
    r = box.run(code, entry="f")
    assert r.ok and "blocked" in r.value and "SECRET" not in r.value, r


@pytest.mark.skipif(os.geteuid() != 0, reason="weak mode drops to another uid only when started as root")
def test_unprivileged_uid_holds_even_past_the_hook(box, tmp_path):
    secret = tmp_path / "root_only.txt"
    secret.write_text("SECRET")
    secret.chmod(0o600)
    tmp_path.chmod(0o755)
    code = f"""
import ctypes, os
def f():
    libc = ctypes.pythonapi  # libc's symbols through an already-loaded library: no dlopen for the hook to see
    fd = libc.open({str(secret).encode()!r}, 0)
    return os.getuid(), fd, ctypes.get_errno() if fd < 0 else None
"""
    r = box.run(code, entry="f")
    assert r.ok and r.value[0] >= 200_000 and r.value[1] == -1, r  # the hook is bypassed; the uid still says no
    assert "SECRET" not in r.stdout + r.stderr


def test_process_group_is_killed_with_the_run(box):
    code = """
import ctypes, time
def f():
    pid = ctypes.pythonapi.fork()  # past the hook, which blocks os.fork
    if pid == 0:
        time.sleep(30)
    return pid
"""
    r = box.run(code, entry="f")
    assert r.ok, r
    if r.value == -1:
        pytest.skip("RLIMIT_NPROC already counts the trainer's processes (weak mode without root)")
    time.sleep(0.3)
    stat = Path(f"/proc/{r.value}/stat")
    assert not stat.exists() or stat.read_text().split()[2] == "Z"  # gone, or dead and not yet reaped


@pytest.mark.skipif(os.geteuid() != 0, reason="the per-run uid sweep needs root (else: the trainer's own uid)")
def test_a_setsid_escapee_dies_with_the_run(box):
    code = """
import ctypes, time
def f():
    libc = ctypes.pythonapi
    pid = libc.fork()  # past the hook, which blocks os.fork
    if pid == 0:
        libc.setsid()  # out of the run's process group
        time.sleep(30)
    return pid
"""
    r = box.run(code, entry="f")
    assert r.ok and r.value > 0, r
    deadline = time.monotonic() + 2.0
    stat = Path(f"/proc/{r.value}/stat")
    while stat.exists() and stat.read_text().split()[2] != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not stat.exists() or stat.read_text().split()[2] == "Z", "the setsid() escapee outlived its run"


@pytest.mark.skipif(os.geteuid() != 0, reason="uids per run need root")
def test_two_pools_on_one_machine_never_share_uids_or_kill_each_others_runs():
    # Two trainers (two data-parallel ranks, two sweep jobs) each hold a pool. Weak mode ends a run by
    # killing every process of its uid, so pools whose runs took the same uids killed each other's.
    import threading

    slow = "import os, time\ndef f():\n    time.sleep(1.5)\n    return os.getuid()"
    with Sandbox(Limits(wall_s=10), namespaces=False) as a, Sandbox(Limits(wall_s=10), namespaces=False) as b:
        result = {}
        thread = threading.Thread(target=lambda: result.setdefault("a", a.run(slow, entry="f")))
        thread.start()
        time.sleep(0.5)  # a's first run is asleep under its uid; b's first run now starts and ends
        quick = b.run("import os\ndef f():\n    return os.getuid()", entry="f")
        thread.join()
        assert quick.ok and result["a"].ok, (quick, result["a"])
        assert quick.value != result["a"].value


@pytest.mark.skipif(os.geteuid() != 0, reason="uid slots are root's")
def test_uid_slots_are_held_while_their_pool_lives_and_the_folder_must_be_roots_alone(tmp_path, monkeypatch):
    import importlib
    from pathlib import Path

    import envs.sandbox

    monkeypatch.syspath_prepend(str(Path(envs.sandbox.__file__).parent))  # a script: its parts load by bare name
    forkserver = importlib.import_module("forkserver")
    monkeypatch.setattr(forkserver, "UID_LOCKS", str(tmp_path / "slots"))
    monkeypatch.setattr(forkserver, "_HELD_SLOTS", [])
    first, second = forkserver._uid_block(), forkserver._uid_block()
    assert (first, second) == (forkserver.UID_BASE, forkserver.UID_BASE + forkserver.UID_BLOCK)
    os.close(forkserver._HELD_SLOTS.pop(0))  # the first pool exits: its slot is free again
    assert forkserver._uid_block() == first
    assert forkserver.UID_BASE + forkserver.UID_SLOTS * forkserver.UID_BLOCK < 2**32 - 1
    for fd in forkserver._HELD_SLOTS:
        os.close(fd)
    os.chmod(tmp_path / "slots", 0o777)  # anyone could take or fake slots
    with pytest.raises(PermissionError, match="slots must be a folder of root's with mode 0700.*drwxrwxrwx"):
        forkserver._uid_block()


REFUSED_NAMESPACES = """
import errno, json, sys, warnings
import pyseccomp
from envs.sandbox import Sandbox, WeakSandboxRefused
# What a container's seccomp profile does: no unshare(), so the sandbox can build no namespaces.
no_unshare = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
no_unshare.add_rule(pyseccomp.ERRNO(errno.EPERM), "unshare")
no_unshare.load()
out = {}
with Sandbox() as box:
    try:
        out["unchosen"] = box.run("def f():\\n    return 'ran'", entry="f").value
    except WeakSandboxRefused as e:
        out["unchosen"] = str(e)
with warnings.catch_warnings(record=True) as caught, Sandbox(allow_weak=True) as box:
    warnings.simplefilter("always")
    out["chosen"] = box.run("def f():\\n    return 'ran'", entry="f").value
    box.run("def f():\\n    return 'ran'", entry="f")
    with Sandbox(allow_weak=True) as other:
        other.run("def f():\\n    return 'ran'", entry="f")
out["warnings"] = [str(w.message) for w in caught]
print(json.dumps(out))
"""


def test_weak_mode_nobody_chose_runs_no_model_code_and_a_chosen_one_warns_once():
    import json
    import subprocess
    import sys

    pytest.importorskip("pyseccomp")
    env = {k: v for k, v in os.environ.items() if k != "TOOLGYM_SANDBOX_ALLOW_WEAK"}
    out = subprocess.run([sys.executable, "-c", REFUSED_NAMESPACES], capture_output=True, text=True, timeout=120,
                         env=env, cwd=Path(__file__).resolve().parents[2], check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["unchosen"].startswith("the sandbox could only start in weak mode (")
    assert "failed: Operation not permitted" in result["unchosen"]  # why weak
    assert "env.sandbox_allow_weak: true" in result["unchosen"]  # and the switch
    assert "filling the disk" in result["unchosen"]  # what it leaves open, Landlock or not
    assert result["chosen"] == "ran"
    assert len(result["warnings"]) == 1 and result["warnings"][0].startswith("SANDBOX IN WEAK MODE (")


def test_the_run_config_switch_is_a_checked_boolean_that_reaches_every_sandbox(monkeypatch):
    from rl.cli import apply_run_environment, check_resolvable
    from rl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="env.sandbox_allow_weak' expects bool, got 'yes'"):
        load_config(None, ["env.sandbox_allow_weak='yes'"])
    monkeypatch.setenv("TOOLGYM_SANDBOX_ALLOW_WEAK", "0")  # so that the test's own setting is undone after it
    monkeypatch.delenv("TOOLGYM_SANDBOX_ALLOW_WEAK")
    check_resolvable(load_config(None, []))
    assert not Sandbox().allow_weak  # off unless chosen
    chosen = load_config(None, ["env.sandbox_allow_weak=true"])
    check_resolvable(chosen)  # checking a config (a sweep checks every point in one process) sets nothing
    assert "TOOLGYM_SANDBOX_ALLOW_WEAK" not in os.environ
    apply_run_environment(chosen)  # every launch script and trainer does, for the run it starts
    assert os.environ["TOOLGYM_SANDBOX_ALLOW_WEAK"] == "1"  # so env worker processes see it too
    assert Sandbox().allow_weak and not Sandbox(allow_weak=False).allow_weak
