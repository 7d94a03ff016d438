"""The training curve of a run, saved as `curve.png` beside its `metrics.jsonl`."""

from __future__ import annotations

import json
from pathlib import Path

CURVES = {"reward": "reward (weighted sum)", "env/solved": "solve rate", "heldout/solve_rate": "held-out solve rate",
          "loss": "loss"}
SMOOTH = 5  # steps in the moving mean drawn over a series at least this long


def curve_series(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) per plotted metric, in step order. Should a step appear twice (a log
    written before resumes cut logs back to the checkpoint), the later value wins."""
    series = {key: sorted({r["step"]: r[key] for r in rows if key in r}.items()) for key in CURVES}
    return {k: v for k, v in series.items() if v}


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
        ax.plot(steps, values, marker="." if len(steps) < 50 else None, alpha=0.5 if len(steps) >= SMOOTH else 1)
        if len(steps) >= SMOOTH:  # per-step values are noisy (a few puzzles per step): a moving mean beside them
            ax.plot(steps[SMOOTH - 1:], [sum(values[i - SMOOTH + 1:i + 1]) / SMOOTH for i in range(SMOOTH - 1, len(values))],
                    color="C1", label=f"mean of {SMOOTH} steps")
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
