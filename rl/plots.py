"""The training curve of a run, saved as `curve.png` beside its `metrics.jsonl`."""

from __future__ import annotations

import json
from pathlib import Path

CURVES = {"reward": "reward (weighted sum)", "env/solved": "solve rate", "loss": "loss"}


def save_curve(run: Path) -> Path | None:
    """Plot the logged reward, solve rate and loss against the step; None if nothing was logged."""
    metrics = Path(run) / "metrics.jsonl"
    if not metrics.exists():
        return None
    rows = [json.loads(line) for line in metrics.open()]
    series = {key: [(r["step"], r[key]) for r in rows if key in r] for key in CURVES}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(series), 1, figsize=(7, 2.6 * len(series)), sharex=True, squeeze=False)
    for ax, (key, points) in zip(axes[:, 0], series.items()):
        steps, values = zip(*points)
        ax.plot(steps, values, marker="." if len(steps) < 50 else None)
        ax.set_ylabel(CURVES[key])
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(Path(run).name)
    fig.tight_layout()
    out = Path(run) / "curve.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
