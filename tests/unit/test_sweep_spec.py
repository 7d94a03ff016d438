"""Sweep files are checked before any trial starts; --dry-run lists the trials and their commands."""

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

from rl.config import parse_override
from rl.sweep.report import mean_ci, objective_value
from rl.sweep.spec import Objective, SweepError, _flow, load_sweep
from rl.sweep.worker import plan_devices

ROOT = Path(__file__).resolve().parents[2]
GOOD = """
name: unit
base:
  env: sudoku
  model: tiny
  set: {output_dir: OUT, grpo.max_steps: 1, log.wandb: off}
launcher: python
grid:
  grpo.learning_rate: [1.0e-5, 1.0e-4]
  grpo.step_advantage_weight: [0.0, 1.0]
seeds: [0, 1]
objective: {metric: reward, read: last, direction: maximize}
"""


def write(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(text.replace("OUT", str(tmp_path / "runs")))
    return path


def sweep_cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=cwd, check=False)


def sweep_main(*args, capsys) -> tuple[int, str]:
    """launch/sweep.py's main in this process: (exit code, stderr)."""
    spec = importlib.util.spec_from_file_location("sweep_script", ROOT / "launch" / "sweep.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    try:
        code = script.main([str(a) for a in args])
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (("grid:", "grdi:"), "unknown sweep key 'grdi' (known: name, base, launcher, grid"),
    (("grid:\n  grpo.learning_rate: [1.0e-5, 1.0e-4]\n  grpo.step_advantage_weight: [0.0, 1.0]", "grid: {}"),
     "empty space: grid: needs at least one dotted run key"),
    (("metric: reward,", "metric: rewrd,"), "unknown objective metric 'rewrd'"),
    (("seeds: [0, 1]", "seeds: [0, one]"), "seeds: must be a non-empty list of integers, got [0, 'one']"),
    (("seeds: [0, 1]", "seeds: [0, 1.5]"), "seeds: must be a non-empty list of integers"),
    (("grpo.step_advantage_weight: [0.0", "grpo.step_advantge_weight: [0.0"),
     "unknown config key 'grpo.step_advantge_weight'"),
    (("grpo.step_advantage_weight: [0.0, 1.0]", "grpo.step_advantage_weight: [0.0, -1.0]"),
     ("the run at grpo.learning_rate=1e-05, grpo.step_advantage_weight=-1.0 is refused: "
      "grpo.step_advantage_weight must")),
    (("grid:\n  grpo.learning_rate", "grid:\n  grpo.seed: [1, 2]\n  grpo.learning_rate"),
     "list the seeds under seeds:"),
    (("metric: reward, read: last", "metric: heldout/solve_rate, read: last"), "eval.every_steps > 0"),
    (("read: last", "read: median"), "unknown objective read 'median' (accepted: last, mean_last, eval)"),
])
def test_a_bad_sweep_file_is_refused_before_any_trial_with_its_problem_named(tmp_path, capsys, change, message):
    text = GOOD.replace(*change)
    assert text != GOOD, change
    code, err = sweep_main(write(tmp_path, text), capsys=capsys)
    assert code == 2, err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists(), "no trial may start"


def test_random_spaces_need_a_budget_and_valid_ranges(tmp_path):
    base = GOOD.split("grid:")[0] + "seeds: [0]\nobjective: {metric: reward}\n"
    with pytest.raises(SweepError, match="needs trials: N"):
        load_sweep(write(tmp_path, base + "random:\n  grpo.learning_rate: {low: 1.0e-6, high: 1.0e-4, log: true}\n"))
    with pytest.raises(SweepError, match="low < high and low > 0 for log"):
        load_sweep(write(tmp_path,
                         base + "trials: 3\noptuna:\n  grpo.learning_rate: {low: 0, high: 1.0e-4, log: true}\n"))
    spec = load_sweep(write(tmp_path, base + "trials: 3\noptuna:\n  grpo.learning_rate: {low: 1.0e-6, high: 1.0e-4, "
                                             "log: true}\n  rollout.max_turns: {low: 2, high: 6}\n"
                                             "  grpo.loss_type: {choices: [dapo, grpo]}\n"))
    assert [r.kind for r in spec.space.values()] == ["float", "int", "choice"] and spec.trials == 3
    with pytest.raises(SweepError, match="step and log: true cannot be combined"):  # Optuna would refuse it mid-sweep
        load_sweep(write(tmp_path, base + "trials: 3\nrandom:\n  grpo.learning_rate: {low: 1.0e-6, high: 1.0e-4, "
                                          "log: true, step: 1.0e-6}\n"))
    with pytest.raises(SweepError, match="step must be > 0"):
        load_sweep(write(tmp_path, base + "trials: 3\nrandom:\n  rollout.max_turns: {low: 2, high: 6, step: 0}\n"))
    with pytest.raises(SweepError, match="choices must be numbers, strings"):
        load_sweep(write(tmp_path, base + "trials: 3\nrandom:\n  grpo.loss_type: {choices: [[grpo], [dapo]]}\n"))
    with pytest.raises(SweepError, match="a pruner with read: eval"):
        load_sweep(write(tmp_path, base.replace("objective: {metric: reward}", "objective: {metric: solve_rate, "
                                                "read: eval}\npruner: {type: median}")
                         + "trials: 3\nrandom:\n  rollout.max_turns: {low: 2, high: 6}\n"))


def test_dry_run_lists_every_point_and_seed_with_its_command(tmp_path):
    result = sweep_cli(write(tmp_path, GOOD), "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("p0")]
    assert [line.split(":")[0] for line in lines] == [f"p00{p}-seed{s}" for p in range(4) for s in (0, 1)]
    assert "4 points x 2 seeds = 8 trials" in result.stdout
    last = lines[-1]
    for part in ("launch/grpo.py --env sudoku --model tiny --name p003-seed1", "grpo.learning_rate=0.0001",
                 "grpo.step_advantage_weight=1.0", "grpo.seed=1", "log.group=unit", f"output_dir={tmp_path}/runs/unit"):
        assert part in last, part
    assert not (tmp_path / "runs").exists(), "a dry run runs nothing"


@pytest.mark.parametrize("value", [1e-5, 0.5, 3, True, "off", "sudoku", "2048", [1, 2], ["a b", "c=d"]])
def test_override_values_parse_back_to_themselves(value):
    _, parsed = parse_override(f"k={_flow(value)}")
    assert parsed == value and type(parsed) is type(value)


def test_mean_and_95_percent_t_interval_over_seeds():
    mean, low, high = mean_ci([1.0, 2.0, 3.0])  # sd 1, t(2) = 4.303
    assert mean == 2.0 and math.isclose(high - mean, 4.303 / math.sqrt(3), rel_tol=1e-9) and math.isclose(low, 4 - high)
    assert math.isnan(mean_ci([0.5])[1]) and mean_ci([0.5])[0] == 0.5
    values = [float(v) for v in range(12)]  # df 11 is not tabulated: df 10's t (2.228) is used, wider than exact
    mean, low, high = mean_ci(values)
    assert math.isclose(high - mean, 2.228 * math.sqrt(13) / math.sqrt(12), rel_tol=1e-9)


def test_objective_reads_the_last_or_the_mean_of_the_last_values():
    rows = [{"step": 1, "reward": 0.1}, {"step": 2, "reward": 0.2}, {"step": 3, "loss": 1.0},
            {"step": 3, "reward": 0.6}]
    assert objective_value(rows, Objective(metric="reward")) == 0.6
    assert math.isclose(objective_value(rows, Objective(metric="reward", read="mean_last", last_n=2)), 0.4)
    assert objective_value(rows, Objective(metric="env/solved")) is None


def test_each_worker_gets_its_own_gpus():
    assert plan_devices(2, 2, ["0", "1", "2", "3"]) == [["0", "1"], ["2", "3"]]
    assert plan_devices(3, 1, []) == [None, None, None]
    with pytest.raises(ValueError, match="needs 6 GPUs; 4 visible"):
        plan_devices(3, 2, ["0", "1", "2", "3"])


def test_asks_after_a_grids_queue_is_empty_are_closed_without_stopping_the_study(tmp_path):
    """Workers racing at the end of a grid ask for trials that are not there: each such ask is closed as
    surplus, as often as it happens (a GridSampler would stop the study, outside optimize(): an error)."""
    import optuna

    from rl.sweep.study import claim, open_storage, open_study

    spec = load_sweep(write(tmp_path, GOOD), resolve=False)
    study = open_study(spec, open_storage(f"sqlite:///{tmp_path / 'study.db'}", None, 5))
    taken = []
    while (claimed := claim(study, spec)) is not None:
        trial, _, point, seed = claimed
        taken.append((point, seed))
        study.tell(trial, 0.0)
    assert sorted(taken) == [(p, s) for p in range(4) for s in (0, 1)]
    for _ in range(3):
        assert claim(study, spec) is None
    surplus = [t for t in study.get_trials() if t.user_attrs.get("surplus")]
    assert len(surplus) == 4 and all(t.state == optuna.trial.TrialState.FAIL for t in surplus)
