"""A sweep's plots (matplotlib, Agg): learning curves per point with a band over seeds, and the objective
against each swept key."""

from __future__ import annotations

import math
from pathlib import Path

from rl.plots import CURVES
from rl.sweep.report import PointResult, mean_ci
from rl.sweep.spec import SweepSpec


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(p: PointResult) -> str:
    return f"p{p.point:03d} " + ", ".join(f"{k.split('.')[-1]}={v}" for k, v in p.params.items())


def plot_curves(results: list[PointResult], spec: SweepSpec, out: Path) -> Path | None:
    """One panel per metric; per point, the mean over seeds at each step and a band from the lowest to the
    highest seed. None when no finished run logged any of the metrics."""
    metrics = [m for m in dict.fromkeys(m for p in results for m in p.curves)
               if any(any(s) for p in results for s in p.curves.get(m, []))]
    if not metrics:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 2.8 * len(metrics)), sharex=True, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        for i, p in enumerate(results):
            by_step: dict[int, list[float]] = {}
            for seed_series in p.curves.get(metric, []):
                for step, value in seed_series:
                    by_step.setdefault(step, []).append(value)
            if not by_step:
                continue
            steps = sorted(by_step)
            ax.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], marker=".", color=f"C{i % 10}",
                    label=_label(p))
            ax.fill_between(steps, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps],
                            color=f"C{i % 10}", alpha=0.2)
        ax.set_ylabel(CURVES.get(metric, metric))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="best", fontsize=7)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(f"{spec.name}: mean over seeds, band = lowest to highest seed")
    return _save(plt, fig, out)


def plot_objective(results: list[PointResult], spec: SweepSpec, out: Path) -> Path | None:
    """One panel per swept key: each seed's objective (dots) and the point's mean with its 95% CI."""
    finished = [p for p in results if p.objective]
    if not finished:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(spec.keys), figsize=(4.5 * len(spec.keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], spec.keys):
        values = sorted({p.params[key] for p in finished}, key=lambda v: (isinstance(v, str), v))
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        x_of = (lambda v: v) if numeric else {v: i for i, v in enumerate(values)}.get
        for p in finished:
            x = x_of(p.params[key])
            ax.scatter([x] * len(p.objective), p.objective, color="C0", alpha=0.4, s=12)
            mean, low, high = mean_ci(p.objective)
            err = None if math.isnan(low) else [[mean - low], [high - mean]]
            ax.errorbar([x], [mean], yerr=err, fmt="o", color="C1", capsize=3)
        if numeric and min(values) > 0 and max(values) / min(values) >= 10:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(values)), [str(v) for v in values])
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(spec.objective.describe())
    fig.suptitle(f"{spec.name}: objective per point (dots: seeds; orange: mean, 95% CI)")
    return _save(plt, fig, out)


def _save(plt, fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
