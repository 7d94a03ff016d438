"""A sweep's results: one row per point of the space, mean and 95% CI over its seeds, as `results.md` and
`results.csv`; learning curves per point with a band over seeds (`curves.png`) and the objective against
each swept key (`objective.png`). Reads the study's trials and each trial's own `metrics.jsonl`."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rl.sweep.spec import Objective, SweepSpec

MAIN_METRICS = ("reward", "env/solved", "heldout/solve_rate")  # beside the objective, last value of each run
# Student's t, two-sided 95%, by degrees of freedom (n seeds - 1); 1.96 beyond
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}


def read_rows(run: Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut off by a kill
            pass
    return rows


def series(rows: list[dict], metric: str) -> list[tuple[int, float]]:
    """(step, value) in step order; a step logged twice (a resumed run) keeps its later value."""
    return sorted({r["step"]: float(r[metric]) for r in rows if metric in r and "step" in r}.items())


def objective_value(rows: list[dict], objective: Objective) -> float | None:
    """The last value of the metric, or the mean of its last `last_n` values; None if never logged."""
    values = [v for _, v in series(rows, objective.metric)]
    if not values:
        return None
    return values[-1] if objective.read == "last" else sum(values[-objective.last_n:]) / len(values[-objective.last_n:])


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval over seeds; one seed gives no interval (NaN bounds)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = T95[max(d for d in T95 if d <= n - 1)]  # the largest tabulated df <= n - 1: never narrower than exact
    half = t * sd / math.sqrt(n)
    return mean, mean - half, mean + half


@dataclass
class PointResult:
    point: int
    params: dict
    seeds_total: int
    objective: list[float] = field(default_factory=list)  # one per finished seed
    metrics: dict[str, list[float]] = field(default_factory=dict)
    curves: dict[str, list[list[tuple[int, float]]]] = field(default_factory=dict)  # metric -> a series per seed
    failed: int = 0
    pruned: int = 0
    best: bool = False


def collect(study, spec: SweepSpec) -> list[PointResult]:
    """Per point: each finished seed's objective (the trial's value) and last main metrics (its metrics.jsonl)."""
    from optuna.trial import TrialState

    points: dict[int, PointResult] = {}
    seen: set[tuple[int, int]] = set()
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if "point" not in t.user_attrs or t.user_attrs.get("surplus"):
            continue
        point = t.user_attrs["point"]
        p = points.setdefault(point, PointResult(point, dict(t.params), len(spec.seeds)))
        if t.state == TrialState.COMPLETE and (p.point, t.user_attrs["seed"]) not in seen:
            seen.add((p.point, t.user_attrs["seed"]))
            rows = read_rows(spec.out / Path(t.user_attrs["run"]).name)  # the folder given, wherever the sweep ran
            p.objective.append(t.value)
            for metric in curve_metrics(spec):
                p.curves.setdefault(metric, []).append(series(rows, metric))
            for metric in MAIN_METRICS:
                if metric != spec.objective.metric and series(rows, metric):
                    p.metrics.setdefault(metric, []).append(series(rows, metric)[-1][1])
        p.failed += t.state == TrialState.FAIL and "error" in t.user_attrs  # not a killed trial (run again)
        p.pruned += t.state == TrialState.PRUNED
    results = [points[k] for k in sorted(points)]
    finished = [p for p in results if p.objective]
    sign = 1 if spec.objective.direction == "maximize" else -1
    means = [sign * mean_ci(p.objective)[0] for p in finished]
    # Every point tied for the best mean, all of them when all tie: as Optuna's study.best_trials. Its
    # study.best_trial names one of the tied trials, which one depending on the storage.
    for p, mean in zip(finished, means):
        p.best = mean == max(means)
    return results


def curve_metrics(spec: SweepSpec) -> list[str]:
    first = [spec.objective.metric] if spec.objective.read != "eval" else []
    return list(dict.fromkeys(first + ["reward", "heldout/solve_rate"]))


def _metric_names(results: list[PointResult]) -> list[str]:
    return [m for m in MAIN_METRICS if any(m in p.metrics for p in results)]


def _cell(values: list[float]) -> str:
    mean, low, high = mean_ci(values)
    if math.isnan(mean):
        return "-"
    return f"{mean:.3g}" if math.isnan(low) else f"{mean:.3g} [{low:.3g}, {high:.3g}]"


def markdown(results: list[PointResult], spec: SweepSpec) -> str:
    metrics = _metric_names(results)
    head = ["point", *spec.keys, "seeds", f"objective: {spec.objective.describe()}", *metrics, "best"]
    lines = [f"# Sweep {spec.name}", "",
             (f"Objective: {spec.objective.describe()} ({spec.objective.direction}); each cell is the mean over the "
              f"point's finished seeds with its 95% t-interval; other metrics are each run's last value."), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in results:
        seeds = f"{len(p.objective)}/{p.seeds_total}" + "".join(
            f", {n} {what}" for n, what in ((p.failed, "failed"), (p.pruned, "pruned")) if n)
        cells = [f"p{p.point:03d}", *(str(p.params.get(k)) for k in spec.keys), seeds, _cell(p.objective),
                 *(_cell(p.metrics.get(m, [])) for m in metrics), "**best**" if p.best else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _stats(name: str) -> list[str]:
    return [f"{name}_mean", f"{name}_ci_low", f"{name}_ci_high"]


def write_csv(results: list[PointResult], spec: SweepSpec, path: Path) -> None:
    metrics = _metric_names(results)
    head = ["point", *spec.keys, "seeds_finished", "seeds_total", "failed", "pruned", *_stats("objective"),
            *(c for m in metrics for c in _stats(m)), "best"]
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(head)
        for p in results:
            numbers = [*mean_ci(p.objective), *(x for m in metrics for x in mean_ci(p.metrics.get(m, [])))]
            out.writerow([f"p{p.point:03d}", *(p.params.get(k) for k in spec.keys), len(p.objective), p.seeds_total,
                          p.failed, p.pruned, *("" if math.isnan(x) else repr(x) for x in numbers), int(p.best)])


def write_report(study, spec: SweepSpec, out: Path) -> list[Path]:
    """results.md, results.csv, curves.png and objective.png in `out`; the paths written."""
    results = collect(study, spec)
    (out / "results.md").write_text(markdown(results, spec))
    write_csv(results, spec, out / "results.csv")
    written = [out / "results.md", out / "results.csv"]
    from rl.sweep.plots import plot_curves, plot_objective

    for path in (plot_curves(results, spec, out / "curves.png"), plot_objective(results, spec, out / "objective.png")):
        if path:
            written.append(path)
    return written
