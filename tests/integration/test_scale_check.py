"""launch/scale_check.sh as a user runs it, on a CPU with the tiny model: one config, checkpointed at step 2 and
resumed for step 3 by a second launch, and its table. (On a GPU it runs Gemma 3 270M with vLLM under every
shipped accelerate config: rl/bench/baselines/README.md.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launch" / "scale_check.sh"
TINY = ["--set", "model.name=tiny", "--set", "rollout.backend=hf", "--set", "grpo.num_generations=2",
        "--set", "grpo.per_device_train_batch_size=2", "--set", "rollout.max_turns=2"]


def scale_check(out: Path, **env: str) -> subprocess.CompletedProcess:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # `accelerate` of this environment
    return subprocess.run(["bash", str(SCRIPT), str(out), *TINY], cwd=ROOT, capture_output=True, text=True, check=False,
                          timeout=900, env={**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", **env})


def test_one_config_resumes_from_its_step_2_checkpoint(tmp_path):
    done = scale_check(tmp_path, ONLY="ddp-lora", RESUME="1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "failed" not in done.stdout
    rows = json.loads((tmp_path / "scale_check.json").read_text())
    assert list(rows) == ["ddp-lora"]  # ONLY: the other six did not run
    row = rows["ddp-lora"]
    # the second launch went on from checkpoint-2 at step 3; one that started over would have logged 1 again
    assert row["steps"] == [1, 2, 3] and row["resumed"] is True
    assert row["step_s"] > 0 and row["peak_gpu_mem_gib"] is None  # no GPU here
    assert "| ddp-lora | 1, 2, 3 | - |" in done.stdout and done.stdout.rstrip().endswith("| yes |")


def test_bad_settings_are_named_with_what_is_accepted(tmp_path):
    done = scale_check(tmp_path, ONLY="zero4-lora")
    assert done.returncode == 2 and "ONLY names zero4-lora: accepted are ddp-lora" in done.stderr
    done = scale_check(tmp_path, RESUME="yes")
    assert done.returncode == 2 and "RESUME=yes: accepted are 0" in done.stderr
    assert not (tmp_path / "scale_check.json").exists()
