"""Kernels reference policies: the task's reference solution, and a plausible wrong kernel.

"Random legal move" has no meaning when the action is a whole program, so the baseline
(`KernelsWrong`, in the RANDOM table) submits a kernel that runs, has the right name
and output shape, and carries the bug a hurried author would write: it earns
`function_works` but fails the hidden tests. The expert submits the reference the env
itself times against (speedup ~1x), after checking it with `run_tests`.
"""

from __future__ import annotations

import inspect
import random

from envs.base import ToolCall
from envs.kernels.env import KernelsEnv

# One plausible bug per task: each runs on every test input and returns the right shape.
WRONG_KERNELS = {
    "matmul": '''def matmul(A, B):
    """Row times row: forgets that B is indexed by column."""
    return [[sum(a * b for a, b in zip(A[i], B[j])) for j in range(len(B[0]))] for i in range(len(A))]
''',
    "softmax": '''import math


def softmax(x):
    """Log-probabilities (a log-softmax) where probabilities were asked for."""
    top = max(x)
    log_total = math.log(sum(math.exp(v - top) for v in x))
    return [v - top - log_total for v in x]
''',
    "prefix_sum": '''def prefix_sum(x):
    """Exclusive instead of inclusive: out[i] misses x[i]."""
    out, total = [], 0.0
    for v in x:
        out.append(total)
        total += v
    return out
''',
    "conv1d": '''def conv1d(x, w):
    """Flips the kernel: a convolution where a correlation was asked for."""
    k = len(w)
    return [sum(x[i + j] * w[k - 1 - j] for j in range(k)) for i in range(len(x) - k + 1)]
''',
    "topk": '''def topk(x, k):
    """Smallest first instead of largest first."""
    return sorted(range(len(x)), key=lambda i: (x[i], i))[:k]
''',
}


def reference_source(env: KernelsEnv) -> str:
    """The task's reference function as source, importing math only when it uses it (and may)."""
    source = inspect.getsource(env.task.reference)
    if "math." not in source:
        return source
    if "math" not in env.allowed:
        raise ValueError(f"the {env.task.name} reference needs math, which this env does not allow "
                         f"(allowed imports: {', '.join(env.allowed) or 'none'})")
    return "import math\n\n\n" + source


class KernelsExpert:
    """`run_tests` on the reference (if `check`), sometimes `benchmark` (share `explore`), then `submit`.

    Three turns at most, the budget of configs/kernels.yaml; `check=False` submits at once.
    """

    def __init__(self, check: bool = True, explore: float = 0.0, seed: int = 0):
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"explore must be a probability in [0, 1], got {explore!r}")
        self.check, self.explore = check, explore
        self.rng = random.Random(seed)

    def __call__(self, env: KernelsEnv) -> ToolCall:
        code = reference_source(env)
        if self.check and env.turns == 0:
            return ToolCall("run_tests", {"code": code})
        if env.turns == int(self.check) and self.rng.random() < self.explore:
            return ToolCall("benchmark", {"code": code})
        return ToolCall("submit", {"code": code})


class KernelsWrong:
    """The baseline: submits `WRONG_KERNELS[task]` at once. `seed` is accepted for the common interface."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, env: KernelsEnv) -> ToolCall:
        if env.task.name not in WRONG_KERNELS:
            raise ValueError(f"no wrong kernel for task {env.task.name!r} (have: {', '.join(WRONG_KERNELS)})")
        return ToolCall("submit", {"code": WRONG_KERNELS[env.task.name]})
