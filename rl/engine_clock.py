"""Where a rollout's generation time went, seen from the loop that feeds the engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class EngineClock:
    """A rollout's engine steps (a batch-only backend's: its batched calls) and the wall time spent in them
    (`busy_s`). For the rest of the rollout the engine had nothing to run: its episodes were in env steps, making
    their next turn's tokens, or held for a round. With the engine core in its own process, a step is the wait for
    its outputs and their processing here. One thread times its steps; read it once they are over."""

    def __init__(self):
        self.steps, self.busy_s = 0, 0.0

    def timed(self, fn: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.steps += 1
            self.busy_s += time.perf_counter() - started
