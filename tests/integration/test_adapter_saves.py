"""Saving the LoRA adapter of a local model asks the hub nothing: peft's save_pretrained looks a base model's
config.json up on the hub when its folder has none, and the built-in `tiny` has no folder, an adapter's folder no
config.json. Runs sft.py and grpo.py with hub access allowed (HF_HUB_OFFLINE unset; only the telemetry of TRL's
trainers off) and every host name lookup of the process recorded."""

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants

ROOT = Path(__file__).resolve().parents[2]
# argv: the file to record looked-up host names in, then the script and its arguments
SPY = """
import runpy, socket, sys
hosts = open(sys.argv[1], "a")
lookup = socket.getaddrinfo
def recorded(host, *args, **kwargs):
    hosts.write(f"{host}\\n")
    hosts.flush()
    return lookup(host, *args, **kwargs)
socket.getaddrinfo = recorded
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def launch(script: str, *args: str, cwd: Path, hosts: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"  # TRL's trainers ping the hub's telemetry on start: not a save
    done = subprocess.run([sys.executable, "-c", SPY, str(hosts), str(ROOT / "launch" / script), *args], env=env,
                          check=False, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]


def test_adapters_of_tiny_and_of_an_adapter_save_without_asking_the_hub(tmp_path):
    hub = urlparse(constants.ENDPOINT).hostname
    common = ["--env", "sudoku", "--set", f"output_dir={tmp_path}", "--set", "log.wandb=off"]
    launch("sft.py", *common, "--model", "tiny", "--name", "sft", "--num-episodes", "4", "--set", "sft.max_steps=1",
           "--set", "sft.save_steps=1", cwd=tmp_path, hosts=tmp_path / "sft-hosts.txt")
    # an adapter's folder as the model, named as a user in the run folder names it (also a valid hub repo id)
    launch("grpo.py", *common, "--model", "sft/adapter", "--name", "grpo", "--set", "grpo.max_steps=1",
           "--set", "grpo.save_steps=1", "--set", "rollout.max_turns=2", "--set", "grpo.per_device_train_batch_size=4",
           "--set", "grpo.gradient_accumulation_steps=1", cwd=tmp_path, hosts=tmp_path / "grpo-hosts.txt")
    for saved in ("sft/checkpoint-1", "sft/adapter", "grpo/checkpoint-1", "grpo/final"):
        assert (tmp_path / saved / "adapter_model.safetensors").exists(), saved
    for run in ("sft", "grpo"):
        path = tmp_path / f"{run}-hosts.txt"
        looked_up = set(path.read_text().split()) if path.exists() else set()
        assert hub not in looked_up, f"{run}: looked up {sorted(looked_up)}"
