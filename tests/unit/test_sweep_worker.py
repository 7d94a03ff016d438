"""Sweep workers with a stand-in for launch/grpo.py (a few lines of Python writing metrics.jsonl): a failed
run is recorded with its log's tail and the sweep goes on; a pruner stops a trailing run early; the report's
rows are the runs' own numbers."""

import csv
import sys
import time

import optuna
import pytest

import rl.sweep.study as st
from rl.sweep.report import write_report
from rl.sweep.spec import load_sweep
from rl.sweep.worker import run_sweep

# argv: run folder, learning rate, seed. 1e-4 fails; 3e-4 logs a low reward, then would train on for a minute.
FAKE_TRAINER = """
import json, sys, time
run, lr, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
if lr == 1e-4:
    print("boom: this learning rate blows up", flush=True)
    sys.exit(3)
with open(run + "/metrics.jsonl", "a") as f:
    reward = 0.01 if lr == 3e-4 else lr * 1e4 + seed
    f.write(json.dumps({"step": 1, "reward": reward, "env/solved": seed / 2}) + "\\n")
    f.flush()
    if lr == 3e-4:
        time.sleep(60)
        f.write(json.dumps({"step": 2, "reward": 5.0}) + "\\n")
"""


@pytest.fixture
def fake_runs(monkeypatch):
    def command(spec, params, seed, name, devices):
        return [sys.executable, "-c", FAKE_TRAINER, str(spec.out / name), str(params["grpo.learning_rate"]), str(seed)]

    monkeypatch.setattr(st, "command", command)


def sweep(tmp_path, pruner=""):
    path = tmp_path / "fake.yaml"
    path.write_text(f"""
base: {{env: sudoku, model: tiny, set: {{output_dir: {tmp_path / 'runs'}}}}}
launcher: python
grid: {{grpo.learning_rate: [1.0e-5, 1.0e-4, 3.0e-4]}}
seeds: [0, 1]
objective: {{metric: reward, read: last}}
{pruner}
""")
    return load_sweep(path)


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_a_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path, fake_runs, storage):
    spec = sweep(tmp_path, "pruner: {type: threshold, lower: 0.05}")
    storage = st.open_storage(None if storage == "sqlite" else str(tmp_path / "journal.log"), spec.out, 1)
    started = time.time()
    run_sweep(spec, storage, 2, [None, None], heartbeat=1)
    assert time.time() - started < 45, "the trailing runs must be pruned, not trained for a minute"
    trials = {(t.user_attrs["point"], t.user_attrs["seed"]): t
              for t in optuna.load_study(study_name="fake", storage=storage).get_trials()
              if not t.user_attrs.get("surplus")}  # an ask that came after the queue emptied: never run
    assert sorted(trials) == [(p, s) for p in range(3) for s in (0, 1)]
    for seed in (0, 1):
        done, failed, pruned = trials[0, seed], trials[1, seed], trials[2, seed]
        assert done.state == optuna.trial.TrialState.COMPLETE and done.value == 0.1 + seed
        assert done.intermediate_values == {1: 0.1 + seed}
        assert failed.state == optuna.trial.TrialState.FAIL
        assert "exit code 3" in failed.user_attrs["error"] and "boom" in failed.user_attrs["error"]
        assert pruned.state == optuna.trial.TrialState.PRUNED and pruned.intermediate_values == {1: 0.01}

    write_report(optuna.load_study(study_name="fake", storage=storage), spec, spec.out)
    rows = {r["point"]: r for r in csv.DictReader((spec.out / "results.csv").open())}
    assert rows["p000"]["seeds_finished"] == "2" and float(rows["p000"]["objective_mean"]) == pytest.approx(0.6)
    assert float(rows["p000"]["env/solved_mean"]) == 0.25 and rows["p000"]["best"] == "1"
    assert (rows["p001"]["seeds_finished"], rows["p001"]["failed"]) == ("0", "2")
    assert (rows["p002"]["seeds_finished"], rows["p002"]["pruned"]) == ("0", "2")
    assert "| p001 | 0.0001 | 0/2, 2 failed |" in (spec.out / "results.md").read_text()
