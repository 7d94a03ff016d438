"""--resume after kill -9, mid-step and mid-checkpoint: every step once in every log; a finished run untouched.

One tiny-model run serves every check: killed while a step runs, resumed and killed while a checkpoint is
written, resumed to the end, then resumed again with nothing left to train.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def grpo(tmp_path, max_steps, *extra):
    return [sys.executable, str(ROOT / "launch" / "grpo.py"), "--env", "sudoku", "--model", "tiny", "--name", "killed",
            "--set", f"output_dir={tmp_path}", "--set", "log.wandb=off", "--set", "grpo.save_steps=1",
            "--set", "grpo.per_device_train_batch_size=4", "--set", "grpo.gradient_accumulation_steps=1",
            "--set", "rollout.max_turns=2", "--set", "eval.every_steps=2", "--set", "eval.during_training=2",
            "--set", f"grpo.max_steps={max_steps}", *extra]


def rows(path):
    return [json.loads(line) for line in path.open()] if path.exists() else []


def finished_rows(path):
    """The lines written whole: a run killed or still writing may leave its last one half written."""
    return [json.loads(line) for line in path.open() if line.endswith("\n")] if path.exists() else []


def kill_when(cmd, ready, cwd, timeout=400):
    """Start `cmd`, SIGKILL its process group as soon as `ready()` holds; fail if it ends first."""
    log = Path(cwd) / "killed-run.log"  # a file, not a pipe: a full pipe would stall the run
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"the run ended before it could be killed: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the run never reached the point to kill it at"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def cut_off(checkpoint: Path) -> None:
    """A kill that came after the save finished is made the kill during it that was aimed at: the trainer
    writes trainer_state.json last, so a checkpoint without it is what a kill mid-save leaves."""
    (checkpoint / "trainer_state.json").unlink(missing_ok=True)


def saving(checkpoint: Path, since: float) -> bool:
    """Whether the run has begun writing `checkpoint` since `since` (a file of it written since then)."""
    try:
        return any(p.stat().st_mtime >= since for p in checkpoint.iterdir())
    except FileNotFoundError:  # not begun yet, or a file went while we looked
        return False


def snapshot(run: Path) -> dict:
    files = [p for p in run.rglob("*") if p.is_file() and "checkpoint-" not in str(p.relative_to(run))]
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns) for p in files if p.name != "curve.png"}


def test_kill_9_mid_step_and_mid_checkpoint_then_resume_logs_every_step_once(tmp_path):
    run = tmp_path / "killed"
    # 1. killed while step 3 runs: its episodes are logged (generated at step 2), checkpoint-2 is complete
    kill_when(grpo(tmp_path, 4), lambda: (run / "checkpoint-2" / "trainer_state.json").exists()
              and any(r["step"] == 2 for r in finished_rows(run / "episodes.jsonl")), tmp_path)
    cut_off(run / "checkpoint-3")
    assert any(r["step"] == 2 for r in finished_rows(run / "episodes.jsonl"))  # logged past the checkpoint

    # 2. resumed, then killed while checkpoint-3 is written (step 3 is in metrics.jsonl by then)
    started = time.time()
    kill_when(grpo(tmp_path, 4, "--resume"), lambda: saving(run / "checkpoint-3", started), tmp_path)
    cut_off(run / "checkpoint-3")
    assert [r["step"] for r in finished_rows(run / "metrics.jsonl") if "reward" in r] == [1, 2, 3]  # logged past it
    assert not (run / "final").exists()

    # 3. resumed to the end: each step once in metrics.jsonl (held-out rows too), episodes.jsonl, heldout/
    done = subprocess.run(grpo(tmp_path, 4, "--resume"), cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = rows(run / "metrics.jsonl")
    assert [r["step"] for r in metrics if "reward" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in metrics if "heldout/solve_rate" in r] == [0, 2, 4]
    assert [r["step"] for r in rows(run / "episodes.jsonl")] == [0, 1, 2, 3]
    assert sorted(p.name for p in (run / "heldout").iterdir()) == ["step-0.json", "step-2.json", "step-4.json"]
    assert (run / "final" / "adapter_model.safetensors").exists()

    # 4. resumed when finished, with the same or a smaller max_steps: says so, trains nothing, touches nothing
    before = snapshot(run)
    for max_steps in (4, 3):
        again = subprocess.run(grpo(tmp_path, max_steps, "--resume"), cwd=tmp_path, capture_output=True, text=True,
                               timeout=300, check=False)
        assert again.returncode == 0, again.stderr[-3000:]
        assert again.stdout.strip() == f"run killed already finished at step 4 (max_steps {max_steps}); nothing to do"
    assert snapshot(run) == before and not (run / "checkpoint-5").exists()
