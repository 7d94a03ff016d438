"""launch/grpo.py end to end on the tiny model: metrics, episodes, checkpoints, final/, two processes."""

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def launch(*args, cwd):
    result = subprocess.run([sys.executable, str(ROOT / "launch" / "grpo.py"), *args], check=False,
                            capture_output=True, text=True, timeout=600, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_run_writes_metrics_episodes_checkpoints_and_final(tmp_path):
    common = ["--env", "sudoku", "--model", "tiny", "--name", "smoke", "--set", f"output_dir={tmp_path}",
              "--set", "log.wandb=off", "--set", "grpo.save_steps=2", "--set", "rollout.max_turns=3",
              "--set", "grpo.per_device_train_batch_size=4", "--set", "grpo.gradient_accumulation_steps=1"]
    result = launch(*common, "--set", "grpo.max_steps=2", cwd=tmp_path)
    run = tmp_path / "smoke"
    assert (run / "checkpoint-2" / "trainer_state.json").exists()
    assert (run / "final" / "adapter_model.safetensors").exists()
    assert (run / "final" / "chat_template.jinja").exists()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    steps = [m for m in metrics if "reward" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for key in ("env/solved", "env/model_turns", "env/format_errors", "rollout/tokens_per_s",
                "rewards/solved/mean", "rewards/sudoku_progress/mean"):
        assert key in steps[0], key
    episodes = [json.loads(line) for line in (run / "episodes.jsonl").open()]
    assert episodes and "<start_of_turn>model" in episodes[0]["text"] and "info" in episodes[0]
    assert "run finished" in result.stdout
    # --resume after kill -9, mid-step and mid-checkpoint: tests/integration/test_resume.py


def test_two_processes_under_accelerate(tmp_path):
    """Data-parallel ranks each roll out their own slice of the batch; metrics are gathered."""
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu",
         "--main_process_port", str(free_port()),  # not 29500: another test's run may hold it (pytest -n 2)
         str(ROOT / "launch" / "grpo.py"), "--env", "sudoku", "--model", "tiny", "--name", "ddp",
         "--set", f"output_dir={tmp_path}", "--set", "log.wandb=off", "--set", "grpo.max_steps=1",
         "--set", "grpo.per_device_train_batch_size=4", "--set", "grpo.gradient_accumulation_steps=1",
         "--set", "rollout.max_turns=2", "--set", "eval.every_steps=1", "--set", "eval.during_training=3"],
        check=False, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").open()]
    steps = [r for r in rows if "reward" in r]
    assert len(steps) == 1 and steps[0]["env/model_turns"] == 2.0
    # held-out seeds split 2 + 1 over the ranks, counts summed: rows at the start and after step 1
    held = [(r["step"], r["heldout/episodes"]) for r in rows if "heldout/solve_rate" in r]
    assert held == [(0, 3.0), (1, 3.0)]
