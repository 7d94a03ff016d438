"""The sweep report's best rows: every point tied for the best mean over its seeds is marked, when all of them tie
too, as Optuna's `study.best_trials` names every trial tied for the best value."""

import csv

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from rl.sweep.report import collect, write_csv
from rl.sweep.spec import load_sweep
from tests.unit.test_sweep_spec import GOOD, write


def study_of(values: dict[int, list[float | None]], direction: str) -> optuna.Study:
    """An in-memory study with one trial per (point, seed), complete with its value, or failed where None."""
    study = optuna.create_study(direction=direction)
    for point, seeds in values.items():
        for seed, value in enumerate(seeds):
            attrs = {"point": point, "seed": seed, "run": f"p{point:03d}-seed{seed}"}
            if value is None:
                study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={**attrs, "error": "boom"}))
            else:
                study.add_trial(create_trial(value=value, user_attrs=attrs))
    return study


def best_rows(tmp_path, values, direction="maximize") -> list[int]:
    spec = load_sweep(write(tmp_path, GOOD.replace("direction: maximize", f"direction: {direction}")))
    results = collect(study_of(values, direction), spec)
    write_csv(results, spec, tmp_path / "results.csv")
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["point"] for r in rows if r["best"] == "1"] == [f"p{p.point:03d}" for p in results if p.best]
    return [p.point for p in results if p.best]


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_points_that_all_tie_are_all_best_as_optunas_best_trials(tmp_path, direction):
    values = {0: [0.5], 1: [0.5], 2: [0.5], 3: [None]}
    assert best_rows(tmp_path, values, direction) == [0, 1, 2]  # not the failed point
    study = study_of(values, direction)
    assert sorted(t.user_attrs["point"] for t in study.best_trials) == [0, 1, 2]


def test_a_single_finished_point_is_best(tmp_path):
    assert best_rows(tmp_path, {0: [None, None], 1: [0.0, 0.0]}) == [1]


@pytest.mark.parametrize("direction, best", [("maximize", [0, 2]), ("minimize", [1])])
def test_points_tied_on_their_mean_over_seeds_are_best_together(tmp_path, direction, best):
    assert best_rows(tmp_path, {0: [0.25, 0.75], 1: [0.25, 0.25], 2: [0.5, 0.5]}, direction) == best
