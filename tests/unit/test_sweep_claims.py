"""Workers on one SQLite study take each queued trial exactly once (what a sweep's grid relies on)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKER = """
import sys, time
sys.path.insert(0, {root!r})
import optuna
from optuna.trial import TrialState
from rl.sweep.study import open_storage
study = optuna.load_study(study_name="claims", storage=open_storage({url!r}, None, 5))
mine = []
while True:
    if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        break
    trial = study.ask()
    if "point" not in trial.user_attrs:  # asked after the queue ran dry: nothing to take
        study.tell(trial, state=TrialState.FAIL)
        continue
    mine.append(trial.user_attrs["point"])
    # The first trial is held until the other worker has taken one too, so that the two take trials side by
    # side however far apart they start: under load one process can spend seconds longer importing than
    # the other, and the first could empty the queue alone. The deadline only ends the wait if the other died.
    deadline = time.time() + 120
    while len(mine) == 1 and time.time() < deadline and not any(
            t.number != trial.number and t.state in (TrialState.RUNNING, TrialState.COMPLETE)
            for t in study.get_trials(deepcopy=False)):
        time.sleep(0.02)
    time.sleep(0.01)
    study.tell(trial, 0.0)
print(" ".join(map(str, mine)))
"""


def test_two_processes_take_each_queued_trial_once(tmp_path):
    import optuna

    from rl.sweep.study import open_storage

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="claims", storage=open_storage(url, None, 5))
    for point in range(24):
        study.enqueue_trial({"x": float(point)}, user_attrs={"point": point})
    code = WORKER.format(root=str(ROOT), url=url)
    workers = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    taken = []
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-2000:]
        taken.append([int(p) for p in out.split()])
    everything = sorted(p for mine in taken for p in mine)
    assert everything == list(range(24)), f"taken twice or never: {taken}"
    assert sum(1 for mine in taken if mine) >= 2, "the workers did not run side by side"


def test_a_sampled_point_runs_once_per_seed_and_the_budget_holds(tmp_path):
    from rl.sweep.spec import Range, SweepSpec
    from rl.sweep.study import claim, next_step, open_storage, open_study

    spec = SweepSpec(name="tpe", path=tmp_path / "tpe.yaml", env="sudoku", space_kind="optuna", trials=3, seeds=[0, 1],
                     space={"grpo.learning_rate": Range(low=1e-6, high=1e-4, log=True),
                            "rollout.max_turns": Range(low=2, high=8),
                            "grpo.loss_type": Range(choices=["dapo", "grpo"])})
    study = open_study(spec, open_storage(f"sqlite:///{tmp_path / 'study.db'}", tmp_path, 5))
    runs = []
    while next_step(study, spec) == "ask":
        claimed = claim(study, spec)
        assert claimed, "a single worker never asks too late"
        trial, params, point, seed = claimed
        runs.append((point, seed, tuple(params.items())))
        study.tell(trial, float(len(runs)))
    assert next_step(study, spec) == "done" and len(runs) == 6
    points = {point: {(seed, params) for p, seed, params in runs if p == point} for point, _, _ in runs}
    assert len(points) == 3
    for seeds in points.values():  # both seeds of a point train with the same values
        assert sorted(s for s, _ in seeds) == [0, 1] and len({params for _, params in seeds}) == 1
    assert isinstance(dict(runs[0][2])["rollout.max_turns"], int)
    assert claim(study, spec) is None, "an ask past the budget is closed, not run"
    assert next_step(study, spec) == "done"
