import math

import pytest

import envs
from envs.kernels.tasks import TASKS, compare, get_task
from envs.sandbox import Sandbox

CORRECT = {
    "matmul": ("def matmul(A, B):\n    cols = list(zip(*B))\n"
               "    return [[sum(a * b for a, b in zip(row, col)) for col in cols] for row in A]"),
    "softmax": ("import math\ndef softmax(x):\n    m = max(x)\n    e = [math.exp(v - m) for v in x]\n    s = sum(e)\n"
                "    return [v / s for v in e]"),
    "prefix_sum": "import itertools\ndef prefix_sum(x):\n    return list(itertools.accumulate(x))",
    "conv1d": ("def conv1d(x, w):\n    k = len(w)\n"
               "    return [sum(a * b for a, b in zip(x[i:i + k], w)) for i in range(len(x) - k + 1)]"),
    "topk": "def topk(x, k):\n    return sorted(range(len(x)), key=lambda i: (-x[i], i))[:k]",
}


@pytest.fixture(scope="module")
def box():
    with Sandbox() as sandbox:
        yield sandbox


def test_task_set_and_seeded_inputs():
    assert set(TASKS) == {"matmul", "softmax", "prefix_sum", "conv1d", "topk"}
    for task in TASKS.values():
        assert task.inputs(3, 7) == task.inputs(3, 7) and task.inputs(3, 7) != task.inputs(3, 8)
    with pytest.raises(ValueError, match=r"unknown kernel task 'fft' \(accepted: matmul, softmax"):
        get_task("fft")


def test_compare_tolerances_and_shapes():
    spec = get_task("softmax")
    assert compare([0.5, 0.5], [0.5, 0.5], spec)["passed"]
    assert not compare([0.5, 0.6], [0.5, 0.5], spec)["passed"]
    bad = compare([0.5], [0.5, 0.5], spec)
    assert not bad["passed"] and "wrong shape" in bad["why"] and math.isinf(bad["max_err"])
    assert not compare([1, 0], [0, 1], get_task("topk"))["passed"]
    assert not compare("nope", [0, 1], get_task("topk"))["passed"]


@pytest.mark.parametrize("name", list(TASKS))
def test_correct_code_passes_and_submit_reports_speedup(box, name):
    env = envs.make("kernels", task=name, trials=3, sandbox=box)
    obs, _ = env.reset(seed=0)
    assert TASKS[name].signature in obs
    obs, *_ = env.step({"name": "run_tests", "arguments": {"code": CORRECT[name]}})
    assert obs.startswith("All") and "passed" in obs, obs
    obs, reward, terminated, _, info = env.step({"name": "submit", "arguments": {"code": CORRECT[name]}})
    assert terminated and reward == 1.0 and info["solved"] and info["function_works"]
    assert info["tests_passed"] == info["tests_total"] > 0 and info["speedup"] > 0, obs


def test_wrong_code_fails_tests_with_a_reason(box):
    env = envs.make("kernels", task="prefix_sum", sandbox=box)
    env.reset(seed=0)
    obs, *_ = env.step({"name": "run_tests", "arguments": {"code": "def prefix_sum(x):\n    return x"}})
    assert "tests failed" in obs and "max error" in obs
    obs, reward, terminated, _, info = env.step({"name": "submit",
                                                 "arguments": {"code": "def prefix_sum(x):\n    return x"}})
    assert terminated and reward == 0 and not info["solved"] and info["speedup"] is None and info["max_err"] > 0


def test_forbidden_imports_are_refused_and_counted(box):
    env = envs.make("kernels", task="matmul", sandbox=box)
    env.reset(seed=0)
    code = "import numpy\ndef matmul(A, B):\n    return (numpy.array(A) @ B).tolist()"
    obs, *_, info = env.step({"name": "run_tests", "arguments": {"code": code}})
    assert "imports not allowed: ['numpy']" in obs and info["forbidden_imports"] == 1 and info["invalid_actions"] == 1


def test_task_can_allow_more_imports(box):
    env = envs.make("kernels", task="prefix_sum", allowed_imports=["itertools", "os"], sandbox=box)
    env.reset(seed=0)
    obs, *_ = env.step({"name": "run_tests", "arguments": {"code": "import os\n" + CORRECT["prefix_sum"]}})
    assert obs.startswith("All")


def test_crashing_and_hanging_code(box):
    env = envs.make("kernels", task="softmax", wall_s=1.0, sandbox=box)
    env.reset(seed=0)
    obs, *_ = env.step({"name": "run_tests", "arguments": {"code": "def softmax(x):\n    while True: pass"}})
    assert "your code failed (timeout)" in obs
    obs, *_ = env.step({"name": "benchmark", "arguments": {"code": "def softmax(x):\n    return 1 / 0"}})
    assert "your code failed" in obs and "ZeroDivisionError" in obs


def test_benchmark_compares_with_the_reference(box):
    env = envs.make("kernels", task="matmul", trials=3, sandbox=box)
    env.reset(seed=0)
    obs, *_ = env.step({"name": "benchmark", "arguments": {"code": CORRECT["matmul"]}})
    assert "reference:" in obs and "speedup" in obs


def test_any_task_is_seeded():
    tasks = set()
    for seed in range(20):
        env = envs.make("kernels")
        env.reset(seed=seed)
        again = envs.make("kernels")
        again.reset(seed=seed)
        assert env.task.name == again.task.name and env.hidden_seeds == again.hidden_seeds
        tasks.add(env.task.name)
    assert len(tasks) >= 3
