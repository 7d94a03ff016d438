"""GRPO under accelerate's shipped configs (configs/accelerate/), launched as a user launches them, on 2 CPU
processes (gloo): DDP across two "machines" on one host, DeepSpeed ZeRO-2 and ZeRO-3 (FSDP2: see below).

Each run is `tests/integration/sharded_probe.py` (a fixed first batch, then a poisoned step 2) and is compared with
the same probe on one process: the first step's loss and grad norm, the weights a vLLM engine would be sent
(gathered from the shards, LoRA merged) at every step, the non-finite guard skipping step 2 on every process,
the trained embedding still tied to the LM head, and one line of output and one row of each log per event.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.integration import sharded_probe
from tests.integration.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "accelerate"
PROBE = ROOT / "tests" / "integration" / "sharded_probe.py"
# One AdamW step moves a weight by up to the learning rate (1e-3): summing in another order may flip a
# near-zero gradient's step, but nothing else.
WEIGHT_ATOL = 1e-5


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The probe on one process, in this process."""
    return sharded_probe.run(str(tmp_path_factory.mktemp("one-process")), "reference")


def launch(config: str, out: Path, name: str, *args: str, machine: tuple[int, int] | None = None,
           wait: bool = True):
    """`accelerate launch --config_file configs/accelerate/<config>.yaml` on 2 processes, as a user runs it."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"{config}.yaml"),
               "--num_processes", "2"]
    if machine is not None:
        rank, port = machine
        command += ["--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
    else:  # not accelerate's default 29500: another test's run may hold it (pytest -n 2)
        command += ["--main_process_port", str(free_port())]
    command += [str(PROBE), str(out), name, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    return finish(process) if wait else process


def finish(process) -> str:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-4000:]
    return stdout + stderr


def metrics(run: Path) -> list[dict]:
    return [row for row in map(json.loads, (run / "metrics.jsonl").open()) if "reward" in row]


def weights(run: Path, version: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "probe" / f"weights-{version}.safetensors"))


def assert_close(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys(), f"{what}: names differ: {sorted(got.keys() ^ want.keys())}"
    worst = max(got, key=lambda k: (got[k] - want[k]).abs().max().item())
    assert torch.allclose(got[worst], want[worst], rtol=0, atol=WEIGHT_ATOL), \
        f"{what}: {worst} differs by {(got[worst] - want[worst]).abs().max().item():.3g}"


def check_run(run: Path, reference: Path, output: str, distributed_type: str, sharded: bool) -> None:
    facts = json.loads((run / "probe" / "probe.json").read_text())
    assert facts["processes"] == 2 and facts["distributed_type"] == distributed_type, facts
    assert (facts["sharded_params"] > 0) == sharded, facts
    assert facts["attention"] == "sdpa"
    # the fixed first batch: the same loss and grad norm as on one process
    first, ref_first = metrics(run)[0], metrics(reference)[0]
    for key in ("loss", "grad_norm"):
        assert abs(first[key] - ref_first[key]) <= 1e-4, (key, first[key], ref_first[key])
    assert ref_first["grad_norm"] > 0.1  # a step that trains: equal numbers are not both zero
    # step 2's NaN loss: skipped on every process, flagged in the log
    assert [m["train/nonfinite_update"] for m in metrics(run)] == [0.0, 1.0]
    # the weights a generation engine receives: gathered whole, LoRA merged, equal to one process's
    for version in (0, 1, 2):
        assert_close(weights(run, version), weights(reference, version), f"weights after step {version}")
    before, after, skipped = weights(run, 0), weights(run, 1), weights(run, 2)
    assert any(not torch.equal(before[k], after[k]) for k in before), "step 1 trained nothing"
    assert all(torch.equal(after[k], skipped[k]) for k in after), "the NaN step changed the weights"
    # Gemma's tied embedding, trained as modules_to_save, is still the LM head
    assert not torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    assert torch.equal(after["model.embed_tokens.weight"], after["lm_head.weight"])
    # one line per event, one row per step: rank 0 prints and writes
    assert output.count("run finished:") == 1, output[-3000:]
    assert output.count("update skipped") == 1, output[-3000:]
    assert [m["step"] for m in metrics(run)] == [1, 2]
    assert [json.loads(line)["step"] for line in (run / "episodes.jsonl").open()] == [0, 1]


def test_zero2_trains_as_one_process(reference, tmp_path):
    output = launch("zero2", tmp_path, "zero2")
    check_run(tmp_path / "zero2", reference, output, "DEEPSPEED", sharded=False)


# fsdp2.yaml is not run here: on a machine without GPUs accelerate 1.16 makes the processes MULTI_CPU and turns
# FSDP on only for GPU-like types (accelerate/state.py), so the run trains as DDP (checked: distributed_type
# MULTI_CPU, no sharded weights). FSDP2 is exercised on GPUs only (launch/scale_check.sh).


def test_zero3_trains_as_one_process_resumes_and_logs_once(reference, tmp_path):
    output = launch("zero3", tmp_path, "zero3", "--set", "log.wandb=offline")
    run = tmp_path / "zero3"
    check_run(run, reference, output, "DEEPSPEED", sharded=True)
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1  # one wandb run, from rank 0
    assert (run / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's sharded state
    saved = weights(run, 2)

    output = launch("zero3", tmp_path, "zero3", "--resume", "--set", "grpo.max_steps=3")
    assert_close(weights(run, 2), saved, "weights resumed from checkpoint-2")  # pushed before step 3
    assert [m["step"] for m in metrics(run)] == [1, 2, 3]
    third = metrics(run)[-1]
    assert third["train/nonfinite_update"] == 0.0 and torch.isfinite(torch.tensor(third["grad_norm"]))
    resumed = weights(run, 3)
    assert any(not torch.equal(saved[k], resumed[k]) for k in saved), "the resumed run trained nothing"
    assert all(torch.isfinite(t).all() for t in resumed.values())
    assert output.count("run finished:") == 1


def test_two_machines_on_one_host(reference, tmp_path):
    """configs/accelerate/multinode.yaml with machine ranks 0 and 1 on 127.0.0.1, one process each."""
    port = free_port()
    machines = [launch("multinode", tmp_path, "ddp", machine=(rank, port), wait=False) for rank in (0, 1)]
    output = "".join(finish(machine) for machine in machines)
    check_run(tmp_path / "ddp", reference, output, "MULTI_CPU", sharded=False)


def test_reference_is_one_process(reference):
    facts = json.loads((reference / "probe" / "probe.json").read_text())
    assert facts["processes"] == 1 and facts["distributed_type"] == "NO"
