"""Kernel tasks for the kernels env: references, seeded inputs, tolerances, and sandbox drivers.

Stdlib only, and no `envs` imports: the sandbox's fork server imports this module by its
bare name and runs `check` / `time_calls` as trusted drivers, outside the sandbox. Inputs
and references stay on this side, so the model's code can neither see the expected
answers nor fake its timings (the round trip is timed here, not in the sandbox).
"""

from __future__ import annotations

import inspect
import math
import random
import statistics
from dataclasses import dataclass, field


def matmul(A, B):
    n, k, m = len(A), len(B), len(B[0])
    return [[sum(A[i][t] * B[t][j] for t in range(k)) for j in range(m)] for i in range(n)]


def softmax(x):
    top = max(x)
    e = [math.exp(v - top) for v in x]
    s = sum(e)
    return [v / s for v in e]


def prefix_sum(x):
    out, total = [], 0.0
    for v in x:
        total += v
        out.append(total)
    return out


def conv1d(x, w):
    k = len(w)
    return [sum(x[i + j] * w[j] for j in range(k)) for i in range(len(x) - k + 1)]


def topk(x, k):
    return sorted(range(len(x)), key=lambda i: (-x[i], i))[:k]


def _vec(rng, n):
    return [rng.uniform(-1, 1) for _ in range(n)]


def _mat(rng, n, m):
    return [_vec(rng, m) for _ in range(n)]


@dataclass(frozen=True)
class Task:
    name: str
    signature: str  # what the model must define
    describe: str
    reference: object  # a function whose source is also what the reference timing runs
    make_inputs: object  # (rng, size) -> list of arguments
    test_sizes: tuple = (1, 3, 8)
    bench_size: int = 64
    atol: float = 1e-6
    exact: bool = False  # integer outputs (indices) must match exactly
    allowed_imports: tuple = field(default=("math", "itertools", "functools", "operator", "collections", "heapq",
                                            "bisect", "array"))

    @property
    def entry(self) -> str:
        return self.reference.__name__

    @property
    def reference_code(self) -> str:
        return "import math\n\n" + inspect.getsource(self.reference)

    def inputs(self, size: int, seed: int) -> list:
        return self.make_inputs(random.Random(seed * 7919 + size), size)


TASKS = {t.name: t for t in [
    Task("matmul", "def matmul(A, B)", "the matrix product of A (n x k) and B (k x m), as a list of n rows",
         matmul, lambda rng, n: [_mat(rng, n, n + 1), _mat(rng, n + 1, n)], bench_size=40),
    Task("softmax", "def softmax(x)", "the softmax of the list x (exp(x_i - max) / sum), numerically stable",
         softmax, lambda rng, n: [[v * 50 for v in _vec(rng, n)]], bench_size=20000),
    Task("prefix_sum", "def prefix_sum(x)", "the running totals of x: out[i] = x[0] + ... + x[i]",
         prefix_sum, lambda rng, n: [_vec(rng, n)], bench_size=50000, atol=1e-9),
    Task("conv1d", "def conv1d(x, w)", "the valid 1-D correlation: out[i] = sum_j x[i + j] * w[j]",
         conv1d, lambda rng, n: [_vec(rng, n + 4), _vec(rng, min(5, n + 1))], bench_size=20000),
    Task("topk", "def topk(x, k)", "the indices of the k largest values of x, largest first (ties: lower index first)",
         topk, lambda rng, n: [[rng.randint(-50, 50) for _ in range(4 * n)], max(1, n)], bench_size=20000,
         exact=True),
]}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown kernel task {name!r} (accepted: {', '.join(TASKS)})")
    return TASKS[name]


def compare(out, ref, task: Task) -> dict:
    """Max absolute error and MSE of `out` against `ref`; `passed` within the task's tolerance."""
    flat_out, flat_ref = _flatten(out), _flatten(ref)
    if flat_out is None or len(flat_out) != len(flat_ref) or _shape(out) != _shape(ref):
        return {"passed": False, "max_err": math.inf, "mse": math.inf,
                "why": f"wrong shape: expected {_shape(ref)}, got {_shape(out)}"}
    if task.exact:
        wrong = sum(a != b for a, b in zip(flat_out, flat_ref))
        return {"passed": wrong == 0, "max_err": float(wrong > 0), "mse": wrong / max(len(flat_ref), 1),
                "why": f"{wrong} of {len(flat_ref)} entries differ" if wrong else ""}
    errs = [abs(a - b) for a, b in zip(flat_out, flat_ref)]
    max_err = max(errs, default=0.0)
    mse = sum(e * e for e in errs) / max(len(errs), 1)
    tol = task.atol * max(1.0, max((abs(b) for b in flat_ref), default=1.0))
    ok = max_err <= tol and not math.isnan(max_err)
    return {"passed": ok, "max_err": max_err, "mse": mse, "why": "" if ok else f"max error {max_err:.3g} > {tol:.3g}"}


def _flatten(x):
    if isinstance(x, bool) or x is None:
        return None
    if isinstance(x, (int, float)):
        return [x]
    if isinstance(x, list):
        out = []
        for v in x:
            f = _flatten(v)
            if f is None:
                return None
            out += f
        return out
    return None


def _shape(x):
    if not isinstance(x, list):
        return type(x).__name__
    return [len(x)] + (_shape(x[0]) if x and isinstance(x[0], list) else [])


def check(child, task: str, sizes: list[int], seeds: list[int]) -> list[dict]:
    """Sandbox driver: call the model's function on every (size, seed) input and compare."""
    spec, cases = get_task(task), []
    for size in sizes:
        for seed in seeds:
            args = spec.inputs(size, seed)
            ref = spec.reference(*args)
            try:
                out = child.call(*args)
            except Exception as e:  # noqa: BLE001 - the model's function may raise anything on this input
                cases.append({"size": size, "seed": seed, "passed": False, "max_err": math.inf, "mse": math.inf,
                              "why": str(e)})
                continue
            cases.append({"size": size, "seed": seed, **compare(out, ref, spec)})
    return cases


def time_calls(child, task: str, size: int, seeds: list[int]) -> dict:
    """Sandbox driver: the median round-trip seconds of one call, over fresh inputs with a cold cache."""
    spec, times = get_task(task), []
    for seed in seeds:
        child.stage(*spec.inputs(size, seed))  # fresh inputs every trial: memoising does not pay
        child.flush_cache()
        times.append(child.run_staged())
    return {"median_s": statistics.median(times), "times_s": times}
