"""The training curve of a run, saved as `curve.png` beside its `metrics.jsonl`."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

CURVES = {"reward": "reward (weighted sum)", "env/solved": "solve rate", "heldout/solve_rate": "held-out solve rate",
          "loss": "loss"}
SMOOTH = 5  # steps in the moving mean drawn over a per-step series at least this long


def curve_series(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) per plotted metric, in step order. Should a step appear twice (a log
    written before resumes cut logs back to the checkpoint), the later value wins."""
    series = {key: sorted({r["step"]: r[key] for r in rows if key in r}.items()) for key in CURVES}
    return {k: v for k, v in series.items() if v}


def moving_mean(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The mean of the last SMOOTH steps at each step, for a series logged at every step; empty for a
    shorter one, or one measured every few steps (held-out evals: a window of SMOOTH points would span
    SMOOTH evals, not SMOOTH steps, and each eval plays the same seeds, so it is not per-step noise)."""
    steps = [step for step, _ in points]
    if len(points) < SMOOTH or any(b - a != 1 for a, b in itertools.pairwise(steps)):
        return []
    values = [value for _, value in points]
    return [(steps[i], sum(values[i - SMOOTH + 1:i + 1]) / SMOOTH) for i in range(SMOOTH - 1, len(values))]


def save_curve(run: Path) -> Path | None:
    """Plot the logged reward, solve rate and loss against the step; None if nothing was logged."""
    metrics = Path(run) / "metrics.jsonl"
    if not metrics.exists():
        return None
    series = curve_series([json.loads(line) for line in metrics.open()])
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(series), 1, figsize=(7, 2.6 * len(series)), sharex=True, squeeze=False)
    for ax, (key, points) in zip(axes[:, 0], series.items()):
        steps, values = zip(*points)
        smooth = moving_mean(points)  # per-step values are noisy (a few puzzles per step): a moving mean beside them
        ax.plot(steps, values, marker="." if len(steps) < 50 else None, alpha=0.5 if smooth else 1)
        if smooth:
            ax.plot(*zip(*smooth), color="C1", label=f"mean of {SMOOTH} steps")
            ax.legend(loc="best", fontsize=8)
        ax.set_ylabel(CURVES[key])
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(Path(run).name)
    fig.tight_layout()
    out = Path(run) / "curve.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
