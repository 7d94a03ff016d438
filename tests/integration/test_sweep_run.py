"""launch/sweep.py end to end on the tiny model: two workers share a grid of 2 points x 2 seeds, the report matches
the runs' own metrics.jsonl; a sweep killed mid-trial resumes without re-running its finished trials."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[2]
CHEAP = {"grpo.max_steps": 1, "grpo.num_generations": 2, "grpo.per_device_train_batch_size": 2,
         "grpo.gradient_accumulation_steps": 1, "rollout.max_turns": 2, "rollout.max_new_tokens": 16,
         "log.wandb": "off"}


def sweep_file(tmp_path, name, grid, seeds, metric="rollout/tokens_per_s"):  # differs from run to run
    lines = [f"name: {name}", "base:", "  env: sudoku", "  model: tiny", "  set:",
             f"    output_dir: {tmp_path / 'runs'}"]
    lines += [f"    {k}: {v}" for k, v in CHEAP.items()]
    lines += ["launcher: python", "grid:"] + [f"  {k}: {v}" for k, v in grid.items()]
    lines += [f"seeds: {seeds}", f"objective: {{metric: {metric}, read: last, direction: maximize}}"]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start(path, *args, cwd):
    return subprocess.Popen([sys.executable, str(ROOT / "launch" / "sweep.py"), str(path), "--heartbeat", "1", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd)


def finish(proc, timeout=900):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").open()]


def study_of(sweep_dir, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir / 'study.db'}")


def test_two_workers_share_a_grid_and_the_report_matches_the_runs(tmp_path):
    grid = {"grpo.learning_rate": "[1.0e-5, 1.0e-4]", "grpo.step_advantage_weight": "[1.0]"}  # 2 points x 2 seeds
    path = sweep_file(tmp_path, "grid", grid, "[0, 1]")
    outs = [finish(p) for p in [start(path, cwd=tmp_path), start(path, cwd=tmp_path)]]
    assert all("[trial" in out for out in outs), "both workers must run trials:\n" + "\n----\n".join(outs)
    sweep = tmp_path / "runs" / "grid"
    trials = [t for t in study_of(sweep, "grid").get_trials() if not t.user_attrs.get("surplus")]
    taken = sorted((t.user_attrs["point"], t.user_attrs["seed"]) for t in trials)
    assert taken == [(p, s) for p in range(2) for s in (0, 1)]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for t in trials:  # each ran once, as the command it stored
        run = Path(t.user_attrs["run"])
        assert [r["step"] for r in rows(run) if "reward" in r] == [1]
        assert t.user_attrs["command"] in (run / "command.sh").read_text()
        assert f"grpo.seed={t.user_attrs['seed']}" in t.user_attrs["command"]

    report = subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), "--report", str(sweep)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)
    assert report.returncode == 0, report.stderr[-3000:]
    table = list(csv.DictReader((sweep / "results.csv").open()))
    assert len(table) == 2
    means = {}
    for row in table:
        point = int(row["point"][1:])
        runs = [sweep / f"p{point:03d}-seed{seed}" for seed in (0, 1)]
        own = [[r for r in rows(run) if "rollout/tokens_per_s" in r][-1] for run in runs]
        assert row["seeds_finished"] == "2"
        assert float(row["objective_mean"]) == sum(r["rollout/tokens_per_s"] for r in own) / 2
        assert float(row["reward_mean"]) == sum(r["reward"] for r in own) / 2
        assert float(row["grpo.learning_rate"]) == [1e-5, 1e-4][point]
        means[row["point"]] = float(row["objective_mean"])
    best = [p for p, m in means.items() if m == max(means.values())]  # all of them, if all tie
    assert best and [r["point"] for r in table if r["best"] == "1"] == best
    markdown = (sweep / "results.md").read_text()
    assert markdown.count("**best**") == len(best) and "| p001 | 0.0001 | 1.0 | 2/2 |" in markdown
    for png in ("curves.png", "objective.png"):
        assert (sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path):
    path = sweep_file(tmp_path, "killed", {"grpo.learning_rate": "[1.0e-5, 2.0e-5]"}, "[0]")
    sweep = tmp_path / "runs" / "killed"
    proc = start(path, cwd=tmp_path)
    deadline = time.time() + 600
    while time.time() < deadline:  # one trial finished and the other one started
        done = [r for r in sweep.glob("p*")
                if (r / "metrics.jsonl").exists() and "train_runtime" in (r / "metrics.jsonl").read_text()]
        started = [r for r in sweep.glob("p*") if (r / "command.sh").exists() and r not in done]
        if done and started:
            break
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.5)
    finished, killed = done[0], started[0]
    before = (finished / "metrics.jsonl").read_bytes(), (finished / "command.sh").stat().st_mtime_ns
    time.sleep(3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()

    out = finish(start(path, cwd=tmp_path))
    assert killed.name in out and finished.name not in out, out[-3000:]
    assert ((finished / "metrics.jsonl").read_bytes(), (finished / "command.sh").stat().st_mtime_ns) == before
    assert [r["step"] for r in rows(killed) if "reward" in r] == [1]
    trials = study_of(sweep, "killed").get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.user_attrs["point"] for t in complete) == [0, 1]
    retried = [t for t in complete if "failed_trial" in t.system_attrs]
    assert len(retried) == 1 and retried[0].user_attrs["run"] == str(killed)
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.number for t in failed] == [retried[0].system_attrs["failed_trial"]]
    assert "error" not in failed[0].user_attrs
