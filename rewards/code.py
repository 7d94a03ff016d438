"""Rewards for model-written code (kernels, strategies), from the episode facts of the envs.

Every function returns values in [-1, 1], so that no single term swamps the others.
Unsloth's notebooks give -20 for cheating next to +1..+3 for the rest: GRPO normalises
rewards within each group of completions, so one -20 outlier inflates the group's
standard deviation and squashes every other difference in that group to about zero
advantage; the model then learns "don't cheat" and nothing else from that group. Here a
cheat costs at most -1 times its weight, on the same scale as the rewards it forfeits
(it also scores 0 on correctness and speed, because the code is not run).
"""

from __future__ import annotations

import math

from rewards import fact, reward


@reward
def function_works(prompts, completions, **kwargs) -> list[float | None]:
    """1 if the submitted code defined the function and it ran without error, else 0."""
    return [None if w is None else float(bool(w)) for w in fact(kwargs, "function_works", len(completions))]


@reward
def no_cheating(prompts, completions, **kwargs) -> list[float | None]:
    """-1 if the code imported something the task does not allow, else 0."""
    return [None if n is None else -1.0 if n else 0.0 for n in fact(kwargs, "forbidden_imports", len(completions))]


def correctness_tier(max_err: float | None, mse: float | None) -> float:
    """1 for max error <= 1e-6, 0.5 for <= 1e-3, 0.25 for MSE <= 1e-2, else 0.

    Tiers rather than a smooth curve: a small error is already "almost right", and a
    log-error curve would reward shaving noise off float round-off.
    """
    if max_err is None or mse is None or math.isnan(max_err) or math.isnan(mse):
        return 0.0
    if max_err <= 1e-6:
        return 1.0
    if max_err <= 1e-3:
        return 0.5
    return 0.25 if mse <= 1e-2 else 0.0


@reward
def correctness(prompts, completions, **kwargs) -> list[float | None]:
    """Share of hidden tests passed when all pass, else the error tier of the worst case (0 to 1)."""
    n = len(completions)
    out = []
    for works, passed, total, max_err, mse in zip(fact(kwargs, "function_works", n), fact(kwargs, "tests_passed", n),
                                                  fact(kwargs, "tests_total", n), fact(kwargs, "max_err", n),
                                                  fact(kwargs, "mse", n)):
        if works is None:
            out.append(None)
        elif not works or not total:
            out.append(0.0)
        elif passed == total:
            out.append(1.0)
        else:  # graded partial credit, never as much as passing
            out.append(min(0.75, 0.5 * passed / total + 0.5 * correctness_tier(max_err, mse)))
    return out


@reward
def speedup(prompts, completions, **kwargs) -> list[float | None]:
    """log2(speedup over the reference) / 3, clipped to [-1, 1]: 8x faster = 1, 8x slower = -1.

    Only correct code has a speedup (wrong but fast code gets 0). Log-ratio, because 2x
    faster and 2x slower should weigh the same; clipped, because one lucky timing must not
    dominate the group.
    """
    n = len(completions)
    out = []
    for works, s in zip(fact(kwargs, "function_works", n), fact(kwargs, "speedup", n)):
        if works is None:
            out.append(None)
        else:
            out.append(0.0 if not s or s <= 0 else max(-1.0, min(1.0, math.log2(s) / 3)))
    return out
