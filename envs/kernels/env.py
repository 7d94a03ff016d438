"""Write a fast, correct kernel (matmul, softmax, prefix sum, 1-D convolution, top-k).

Tools: `run_tests(code)` (correctness on small inputs), `benchmark(code)` (median time vs
the reference over fresh inputs with a cold cache) and `submit(code)` (hidden tests plus a
benchmark; ends the episode). The model's code runs only in the sandbox; inputs,
references and timings stay on the trusted side. Imports are limited to the task's
`allowed_imports` (stdlib only by default: writing the loop is the task, importing numpy
is not).
"""

from __future__ import annotations

import threading

from envs.base import ToolEnv, ToolError, tool
from envs.kernels.tasks import TASKS, get_task
from envs.sandbox.box import Limits, Sandbox, default_sandbox, extract_code, imports_outside, parse_function

_reference_times: dict[tuple, float] = {}  # (task, size, seeds) -> median seconds, per trainer process
_reference_lock = threading.Lock()


class KernelsEnv(ToolEnv):
    default_max_steps = 6

    def __init__(self, task: str = "any", allowed_imports: list[str] | None = None, trials: int = 5,
                 wall_s: float = 20.0, max_steps: int | None = None, sandbox: Sandbox | None = None,
                 render_mode: str | None = None):
        if task != "any":
            get_task(task)
        super().__init__(max_steps=max_steps, max_invalid=None, render_mode=render_mode)
        self.task_name, self.allowed_override, self.trials = task, allowed_imports, trials
        self.limits, self.sandbox = Limits(wall_s=wall_s, cpu_s=wall_s), sandbox

    def setup(self, options: dict) -> str:
        name = options.get("task", self.task_name)
        if name == "any":
            name = list(TASKS)[int(self.np_random.integers(len(TASKS)))]
        self.task = get_task(name)
        self.allowed = tuple(self.allowed_override if self.allowed_override is not None else self.task.allowed_imports)
        self.test_seeds, self.hidden_seeds = ([int(s)] for s in self.np_random.integers(2**31, size=2))
        # Fixed timing inputs (fresh per trial, unseen by the code) let the reference time be reused.
        self.bench_seeds = list(range(self.trials))
        self.result = {"task": name, "submitted": False, "function_works": False, "forbidden_imports": 0,
                       "tests_passed": 0, "tests_total": 0, "max_err": None, "mse": None, "speedup": None}
        return (f"Write a fast pure-Python function `{self.task.signature}` that returns {self.task.describe}. "
                f"Allowed imports: {', '.join(self.allowed) or 'none'}. Use run_tests and benchmark to check your "
                f"code, then submit it.")

    # -- tools -------------------------------------------------------------------------

    @tool
    def run_tests(self, code: str) -> str:
        """Check your function on small inputs against the reference.

        Args:
            code: Python source defining the requested function.
        """
        cases = self._check(code, self.test_seeds)
        failed = [c for c in cases if not c["passed"]]
        if not failed:
            return f"All {len(cases)} tests passed."
        c = failed[0]
        return f"{len(failed)} of {len(cases)} tests failed. First failure (size {c['size']}): {c['why']}"

    @tool
    def benchmark(self, code: str) -> str:
        """Time your function against the reference implementation (median of several runs).

        Args:
            code: Python source defining the requested function.
        """
        speedup, mine, ref = self._speedup(code)
        return f"Your function: {mine * 1e3:.2f} ms, reference: {ref * 1e3:.2f} ms, speedup {speedup:.2f}x."

    @tool
    def submit(self, code: str) -> str:
        """Submit your final function: hidden tests, then a benchmark; this ends the episode.

        Args:
            code: Python source defining the requested function.
        """
        self.terminated, self.result["submitted"] = True, True
        cases = self._check(code, self.hidden_seeds)
        passed = sum(c["passed"] for c in cases)
        self.result.update(function_works=True, tests_passed=passed, tests_total=len(cases),
                           max_err=max(c["max_err"] for c in cases), mse=max(c["mse"] for c in cases))
        text = f"Hidden tests: {passed} of {len(cases)} passed."
        if passed == len(cases):
            self.step_reward += 1.0
            speedup, _, _ = self._speedup(code)
            self.result["speedup"] = speedup
            text += f" Speedup over the reference: {speedup:.2f}x."
        return text

    # -- sandbox runs ------------------------------------------------------------------

    def _validated(self, code: str) -> str:
        code = extract_code(code)
        problem = parse_function(code, self.task.entry)
        forbidden = imports_outside(code, self.allowed)
        self.result["forbidden_imports"] = max(self.result["forbidden_imports"], len(forbidden))
        if problem:
            raise ToolError(problem)
        if forbidden:
            raise ToolError(f"imports not allowed: {forbidden} (allowed: {', '.join(self.allowed) or 'none'})")
        return code

    def _run(self, code: str, driver: str, **driver_args):
        run = (self.sandbox or default_sandbox()).run(
            code, self.task.entry, driver=f"kernels/tasks.py:{driver}", limits=self.limits,
            driver_args={"task": self.task.name, **driver_args}, allowed_imports=self.allowed)
        if not run.ok:
            raise ToolError(f"your code failed ({run.status}): {run.error}"
                            + (f"\n{run.stderr[-500:]}" if run.stderr else ""))
        return run.value

    def _check(self, code: str, seeds: list[int]) -> list[dict]:
        return self._run(self._validated(code), "check", sizes=list(self.task.test_sizes), seeds=seeds)

    def _speedup(self, code: str) -> tuple[float, float, float]:
        mine = self._run(self._validated(code), "time_calls", size=self.task.bench_size, seeds=self.bench_seeds)
        key = (self.task.name, self.task.bench_size, tuple(self.bench_seeds))
        with _reference_lock:
            ref = _reference_times.get(key)
        if ref is None:
            run = (self.sandbox or default_sandbox()).run(
                self.task.reference_code, self.task.entry, driver="kernels/tasks.py:time_calls", limits=self.limits,
                driver_args={"task": self.task.name, "size": self.task.bench_size, "seeds": self.bench_seeds})
            if not run.ok:
                raise RuntimeError(f"the reference {self.task.name} failed in the sandbox: {run.error}")
            ref = run.value["median_s"]
            with _reference_lock:
                _reference_times[key] = ref
        return ref / max(mine["median_s"], 1e-9), mine["median_s"], ref

    @property
    def solved(self) -> bool:
        return self.result.get("tests_total", 0) > 0 and self.result["tests_passed"] == self.result["tests_total"]

    def facts(self) -> dict:
        return dict(self.result)
