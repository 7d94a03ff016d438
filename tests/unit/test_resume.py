"""What --resume continues: the one run of an env, logs cut back to the checkpoint, finished runs left alone."""

import argparse
import json

import pytest

from rl.cli import add_run_arguments, config_from_args
from rl.config import ConfigError
from rl.resume import finished, only_run, resume_from, trim_logs


def write_rows(path, rows, torn=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + torn)


def read_rows(path):
    return [json.loads(line) for line in path.open()]


def checkpoint(run, step, complete=True):
    path = run / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))


def test_logs_are_cut_back_to_the_checkpoint_step(tmp_path):
    # killed during step 4 of a run resumed once before from checkpoint-2 by the old code: 1,2,3,3,4
    steps = [1, 2, 3, 3, 4]
    write_rows(tmp_path / "metrics.jsonl", [{"step": s, "reward": s} for s in steps] + [{"note": "no step"}],
               torn='{"step": 4, "rew')
    write_rows(tmp_path / "episodes.jsonl", [{"step": s, "text": "t"} for s in (0, 1, 2, 2, 3)])
    (tmp_path / "heldout").mkdir()
    for s in (0, 2, 3, 4):
        (tmp_path / "heldout" / f"step-{s}.json").write_text("{}")
    trim_logs(tmp_path, 2)
    assert read_rows(tmp_path / "metrics.jsonl") == [{"step": 1, "reward": 1}, {"step": 2, "reward": 2},
                                                     {"note": "no step"}]
    # episodes carry the step they were generated at: step 3's batch was generated at step 2
    assert [r["step"] for r in read_rows(tmp_path / "episodes.jsonl")] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "heldout").iterdir()) == ["step-0.json", "step-2.json"]
    assert not list(tmp_path.glob("*.tmp"))


def test_logs_already_within_the_checkpoint_are_not_rewritten(tmp_path):
    write_rows(tmp_path / "metrics.jsonl", [{"step": 1}, {"step": 2}])
    before = (tmp_path / "metrics.jsonl").stat()
    trim_logs(tmp_path, 2)
    after = (tmp_path / "metrics.jsonl").stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_a_run_is_finished_once_its_checkpoint_reaches_max_steps(tmp_path):
    run = tmp_path / "demo"
    checkpoint(run, 2)
    checkpoint(run, 4, complete=False)  # cut off mid-save: passed over
    assert finished(run, 4) is None and finished(run, 3) is None
    assert "no final/" in finished(run, 2) and "checkpoint-2/" in finished(run, 2)
    (run / "final").mkdir()
    assert finished(run, 2) == "run demo already finished at step 2 (max_steps 2); nothing to do"
    assert finished(run, 1) == "run demo already finished at step 2 (max_steps 1); nothing to do"
    assert finished(run, 3) is None and finished(run, -1) is None


def test_an_sft_run_measured_in_epochs_is_finished_once_its_checkpoint_completes_them(tmp_path):
    run = tmp_path / "sft"
    checkpoint(run, 8)
    state = run / "checkpoint-8" / "trainer_state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "epoch": 2.0}))
    (run / "final").mkdir()
    assert finished(run, -1, 2.0) == "run sft already finished at step 8 (num_train_epochs 2); nothing to do"
    assert finished(run, -1, 3.0) is None  # more epochs asked: it trains on
    assert finished(run, -1) is None  # no goal known: resume as asked
    assert finished(run, 8, 3.0) is not None  # max_steps, when set, decides (as TRL's trainer does)


def make_run(root, name, env):
    (root / name).mkdir(parents=True)
    (root / name / "config.yaml").write_text(f"name: {name}\nenv:\n  name: '{env}'\n")


def test_resume_without_a_name_needs_exactly_one_run_of_the_env(tmp_path):
    with pytest.raises(ConfigError, match="no runs of env 'sudoku'"):
        only_run(tmp_path, "sudoku")
    make_run(tmp_path, "mine", "sudoku")
    make_run(tmp_path, "2048-20261204-101010", "2048")
    assert only_run(tmp_path, "sudoku") == "mine"
    make_run(tmp_path, "sudoku-20261204-101010", "sudoku")
    with pytest.raises(ConfigError, match=r"--resume: 2 runs of env 'sudoku' under .* \((mine|sudoku-\S+), "
                                          r"(mine|sudoku-\S+)\); pass --name to pick one"):
        only_run(tmp_path, "sudoku")


def test_the_cli_resumes_the_one_run_and_refuses_to_guess_between_two(tmp_path):
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    args = parser.parse_args(["--env", "sudoku", "--set", f"output_dir={tmp_path}"])
    make_run(tmp_path, "solo", "sudoku")
    assert config_from_args(args, resume=True).name == "solo"
    make_run(tmp_path, "other", "sudoku")
    with pytest.raises(ConfigError, match="2 runs of env 'sudoku'"):
        config_from_args(args, resume=True)
    named = parser.parse_args(["--env", "sudoku", "--name", "other", "--set", f"output_dir={tmp_path}"])
    assert config_from_args(named, resume=True).name == "other"


def test_resume_from_the_last_complete_checkpoint_cuts_the_logs_back_to_it(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert resume_from(tmp_path, resume=False) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint-"):
        resume_from(tmp_path, resume=True)
    checkpoint(tmp_path, 2)
    checkpoint(tmp_path, 3, complete=False)  # cut off mid-save: passed over
    write_rows(tmp_path / "metrics.jsonl", [{"step": s} for s in (1, 2, 3)])
    assert resume_from(tmp_path, resume=True) == tmp_path / "checkpoint-2"
    assert [r["step"] for r in read_rows(tmp_path / "metrics.jsonl")] == [1, 2]
