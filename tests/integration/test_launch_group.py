"""A launched run ends the torch.distributed group its launcher set up, as its process ends: where one is left
(NCCL, under `accelerate launch` on GPUs), torch warns at exit that destroy_process_group() was not called.
Here the group is gloo's, a world of 1, set up before the entry point runs, as a launcher's is."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAUNCHED = """
import runpy
import sys

import torch.distributed as dist

dist.init_process_group("gloo", store=dist.FileStore(sys.argv[1] + "/store", 1), world_size=1, rank=0)
sys.argv = sys.argv[2:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as done:
    print("EXIT", done.code)
print("GROUP LEFT", dist.is_initialized())
"""


def launched(tmp_path: Path, script: str, *args: str) -> str:
    common = ["--env", "sudoku", "--model", "tiny", "--set", f"output_dir={tmp_path}", "--set", "log.wandb=off"]
    done = subprocess.run([sys.executable, "-c", LAUNCHED, str(tmp_path), str(ROOT / "launch" / script), *common,
                           *args], capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
    assert done.returncode == 0 and "EXIT 0" in done.stdout, done.stderr[-3000:]
    return done.stdout


def test_grpo_and_sft_end_the_launchers_process_group(tmp_path):
    out = launched(tmp_path, "grpo.py", "--name", "grpo", "--set", "grpo.max_steps=1",
                   "--set", "grpo.per_device_train_batch_size=4", "--set", "grpo.gradient_accumulation_steps=1")
    assert "run finished" in out and "GROUP LEFT False" in out
    out = launched(tmp_path, "sft.py", "--name", "sft", "--num-episodes", "2", "--set", "sft.max_steps=1",
                   "--set", "sft.per_device_train_batch_size=2")
    assert "SFT finished" in out and "GROUP LEFT False" in out


def test_the_rollouts_hand_the_run_end_to_their_engine():
    """With `rollout.backend=vllm` the engine joined the launcher's group: it ends it (tests/integration/
    test_vllm_shutdown.py), so the run's end must reach it."""
    from types import SimpleNamespace

    from rl.trainer import EpisodeRollouts

    ended = []
    rollouts = EpisodeRollouts.__new__(EpisodeRollouts)  # only its engine matters here
    rollouts.backend = SimpleNamespace(shutdown=lambda end_group=False: ended.append(end_group))
    rollouts.shutdown()
    rollouts.shutdown(end_group=True)
    assert ended == [False, True]
