"""The sandbox's contract: structured results, limits, drivers, static checks. Real processes, no mocks."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from envs.sandbox import Limits, Sandbox, extract_code, imports_outside, parse_function


@pytest.fixture(scope="module")
def box():
    with Sandbox(Limits(wall_s=5, cpu_s=5)) as sandbox:
        yield sandbox


def test_runs_a_function_and_returns_value_and_output(box):
    r = box.run("def f(x, y):\n    print('adding', x, y)\n    return {'sum': x + y}", entry="f", args=[2, 3])
    assert r.status == "ok" and r.value == {"sum": 5} and r.stdout == "adding 2 3\n" and r.error == ""
    assert r.wall_s > 0 and r.cpu_s >= 0 and r.isolation in ("namespaces", "weak")


def test_never_runs_in_the_calling_process(box):
    r = box.run("import os\ndef f():\n    return os.getpid()", entry="f")
    assert r.ok and r.value != os.getpid()


def test_exceptions_are_errors_with_the_message(box):
    r = box.run("def f():\n    raise ValueError('bad input 7')", entry="f")
    assert r.status == "error" and "ValueError: bad input 7" in r.error and r.value is None
    r = box.run("def f(:\n", entry="f")
    assert r.status == "error" and "SyntaxError" in r.error
    r = box.run("def g():\n    return 1", entry="f")
    assert r.status == "error" and "no function named 'f' is defined (defined: g)" in r.error


def test_unjsonable_return_value_is_an_error(box):
    r = box.run("def f():\n    return object()", entry="f")
    assert r.status == "error" and "not JSON-serializable" in r.error


def test_wall_clock_deadline_kills(box):
    r = box.run("import time\ndef f():\n    time.sleep(30)", entry="f", limits=Limits(wall_s=0.5))
    assert r.status == "timeout" and "deadline" in r.error


def test_cpu_limit(box):
    r = box.run("def f():\n    while True:\n        pass", entry="f", limits=Limits(wall_s=10, cpu_s=1))
    assert r.status == "timeout" and r.cpu_s >= 0.9


def test_memory_limit(box):
    r = box.run("def f():\n    return len(bytearray(1 << 30))", entry="f", limits=Limits(memory_mb=256))
    assert r.status == "memory"


def test_file_size_limit(box):
    r = box.run("def f():\n    open('big', 'wb').write(b'x' * (4 << 20))", entry="f", limits=Limits(file_mb=1))
    assert r.status == "error" and "File too large" in r.error


def test_scratch_is_private_and_writable(box):
    code = ("import os\ndef f():\n    open('note.txt', 'w').write('hi')\n"
            "    return os.listdir('.'), open('note.txt').read()")
    assert box.run(code, entry="f").value == [["note.txt"], "hi"]
    assert box.run("import os\ndef f():\n    return os.listdir('.')", entry="f").value == []  # fresh each run


def test_every_run_gets_a_fresh_process(box):
    code = "import os, sys\ndef f():\n    seen = getattr(sys, 'marker', None)\n    sys.marker = 'dirty'\n" \
           "    return seen, os.getuid()"
    runs = [box.run(code, entry="f") for _ in range(4)]  # two runners, each armed twice
    assert all(r.ok and r.value[0] is None for r in runs), runs  # no process is ever reused
    if os.geteuid() == 0:
        assert len({r.value[1] for r in runs}) == 4 and min(r.value[1] for r in runs) >= 200_000


def test_scratch_size_limit(box):
    if box.isolation["mode"] != "namespaces":
        pytest.skip("weak mode has a scratch directory, not a size-capped tmpfs")
    code = "def f():\n    open('big', 'wb').write(b'x' * (3 << 20))"
    r = box.run(code, entry="f", limits=Limits(wall_s=5, cpu_s=5, scratch_mb=2))
    assert r.status == "error" and "No space left on device" in r.error
    assert box.run(code, entry="f").ok  # the default 16 MiB again on the next run


def test_environment_is_minimal(box, monkeypatch):
    monkeypatch.setenv("TOOLGYM_TEST_SECRET", "hunter2")
    r = box.run("import os\ndef f():\n    return dict(os.environ)", entry="f")
    assert r.ok and "TOOLGYM_TEST_SECRET" not in r.value and "hunter2" not in str(r.value)


def test_runtime_import_gate(box):
    r = box.run("import socket\ndef f():\n    return 1", entry="f", allowed_imports=["math"])
    assert r.status == "error" and "import of 'socket' is not allowed (allowed: math)" in r.error
    assert box.run("import math\ndef f():\n    return math.floor(2.5)", entry="f", allowed_imports=["math"]).value == 2


def test_an_unknown_driver_is_refused_before_the_run_naming_the_drivers(box):
    with pytest.raises(ValueError, match=r"unknown driver 'rules.py:play_games' \(accepted: one of g2048/rules.py, "
                                         r"kernels/tasks.py, sudoku/games.py, as 'path:function'\)"):
        box.run("def strategy(board):\n    return 'up'", entry="strategy", driver="rules.py:play_games")


def test_driver_calls_the_function_per_move(box):
    code = ("import random\nrng = random.Random(0)\ndef strategy(board):\n"
            "    return rng.choice(['left', 'up', 'right', 'down'])")
    r = box.run(code, entry="strategy", driver="g2048/rules.py:play_games", driver_args={"seeds": [1, 2]})
    assert r.ok and [g["seed"] for g in r.value] == [1, 2] and all(g["moves"] > 10 for g in r.value)
    again = box.run(code, entry="strategy", driver="g2048/rules.py:play_games", driver_args={"seeds": [1, 2]})
    assert again.value == r.value  # seeded: same seeds, same strategy, same games


def test_output_printed_across_many_calls_is_captured_up_to_the_cap(box):
    code = "import random\nrng = random.Random(0)\ndef strategy(board):\n    print('x' * 999)\n" \
           "    return rng.choice(['left', 'up', 'right', 'down'])"
    r = box.run(code, entry="strategy", driver="g2048/rules.py:play_games", driver_args={"seeds": [1]},
                limits=Limits(wall_s=5, cpu_s=5, output_bytes=50_000))  # more than a pipe holds: copied while it plays
    assert r.ok and r.value[0]["moves"] > 60 and r.truncated and r.stdout == ("x" * 999 + "\n") * 50


def _processes_under(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            pass
    found, frontier = [], [pid]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def test_per_move_drivers_pin_the_child_to_its_runners_cpu_for_the_run_only(box):
    code = "import os, random\nrng, seen = random.Random(0), []\ndef strategy(board):\n" \
           "    if not seen:\n        seen.append(print(len(os.sched_getaffinity(0))))\n" \
           "    return rng.choice(['left', 'up', 'right', 'down'])"
    r = box.run(code, entry="strategy", driver="g2048/rules.py:play_games", driver_args={"seeds": [1]})
    assert r.ok and r.stdout == "1\n"  # one CPU, shared with its runner
    server = box._server.proc.pid
    deadline = time.monotonic() + 5
    while any(os.sched_getaffinity(p) != os.sched_getaffinity(server) for p in _processes_under(server)):
        assert time.monotonic() < deadline, "a runner kept its pinned CPU after its run"  # `reap` unpins it
        time.sleep(0.01)


def test_concurrent_runs_from_threads(box):
    results = [None] * 8

    def work(i):
        results[i] = box.run("def f(i):\n    return i * i", entry="f", args=[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.value for r in results] == [i * i for i in range(8)]


def test_runners_that_died_while_idle_are_replaced(box):
    for _ in range(4):
        assert box.run("def f():\n    return 1", entry="f").ok
    server = str(box._server.proc.pid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[1] == server:  # a runner (its zygote and child die with it)
                os.kill(int(stat.parent.name), signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.2)
    runs = [box.run("def f():\n    return 2", entry="f") for _ in range(4)]
    assert [(r.status, r.value) for r in runs] == [("ok", 2)] * 4, runs  # nothing ran in them, so nothing failed


def test_isolation_report_names_the_mechanisms(box):
    iso = box.isolation
    assert iso["mode"] in ("namespaces", "weak") and {"network", "filesystem", "processes", "ipc", "user"} <= set(iso)


def test_static_checks():
    assert parse_function("def strategy(b):\n    return 'up'", "strategy") is None
    assert ("no top-level function named 'strategy' (defined: helper)"
            in parse_function("def helper(): pass", "strategy"))
    assert "syntax error on line 1" in parse_function("def (", "f")
    code = ("import numpy as np\nfrom os import path\nimport math\nx = __import__('sys')\n"
            "y = ().__class__.__subclasses__()")
    assert imports_outside(code, ["math"]) == ["numpy", "os", "__import__()", ".__subclasses__"]
    assert imports_outside("import math, itertools", ["math", "itertools"]) == []


def test_extract_code_takes_the_last_python_block():
    text = "First try:\n```python\ndef f(): return 1\n```\nBetter:\n```python\ndef f():\n    return 2\n```\n"
    assert extract_code(text) == "def f():\n    return 2"
    assert extract_code("def f(): return 3") == "def f(): return 3"
