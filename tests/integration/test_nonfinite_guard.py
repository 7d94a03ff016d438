"""A NaN in one step's gradients skips that update; the run goes on with finite weights."""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerCallback

from rl.config import load_config
from rl.guards import SkipNonFiniteUpdates
from rl.trainer import build_trainer


def model_tokens(prompts, completions, **kwargs):
    """Varies within every group, so every step has a gradient."""
    return [float(n) for n in kwargs["model_tokens"]]


class Snapshots(TrainerCallback):
    """The trainable weights after every optimizer step."""

    def __init__(self, params: dict):
        self.params, self.taken = params, []

    def on_step_end(self, args, state, control, **kwargs):
        self.taken.append({n: p.detach().clone() for n, p in self.params.items()})


def test_poisoned_step_is_skipped_and_training_continues(tmp_path):
    cfg = load_config(None, [
        "model.name=tiny", "model.tool_format=first_digit", "env.name=tests.integration.pick_env:PickEnv",
        f"output_dir={tmp_path}", "name=nan", "log.wandb=off", "grpo.max_steps=3", "grpo.num_generations=8",
        "grpo.per_device_train_batch_size=16", "grpo.save_steps=100", "grpo.learning_rate=1e-2",
        "rollout.max_turns=2", "rollout.max_new_tokens=6", "rollout.max_completion_tokens=64"])
    cfg.rewards["tests.integration.test_nonfinite_guard:model_tokens"] = 0.1
    trainer = build_trainer(cfg)
    trainable = {n: p for n, p in trainer.model.named_parameters() if p.requires_grad}
    poisoned = next(iter(trainable.values()))
    backwards = []

    def poison_second_step(grad):  # one backward per step (one micro-batch of 16)
        backwards.append(1)
        return torch.full_like(grad, float("nan")) if len(backwards) == 2 else grad

    poisoned.register_hook(poison_second_step)
    snapshots = Snapshots(trainable)
    trainer.add_callback(snapshots)
    trainer.train()

    assert len(backwards) == 3
    flags = [m["train/nonfinite_update"] for m in trainer.state.log_history if "reward" in m]
    assert flags == [0.0, 1.0, 0.0]
    first, second, third = snapshots.taken
    assert all(torch.equal(first[n], second[n]) for n in trainable), "the poisoned update was applied"
    assert any(not torch.equal(second[n], third[n]) for n in trainable), "training stopped after the skip"
    assert all(torch.isfinite(p).all() for p in trainable.values())


def test_a_diverged_model_stops_the_run_with_a_clear_error():
    model = torch.nn.Linear(3, 2)
    trainer = SimpleNamespace(model=model, _metrics={"train": defaultdict(list)})
    guard = SkipNonFiniteUpdates(trainer, max_consecutive=2)
    state = SimpleNamespace(global_step=7)
    model.weight.grad = torch.ones_like(model.weight)
    model.bias.grad = torch.tensor([1.0, float("inf")])
    guard.on_pre_optimizer_step(None, state, None)
    assert model.weight.grad is None and model.bias.grad is None and guard.skipped == 1
    model.weight.grad = torch.full_like(model.weight, float("nan"))
    with pytest.raises(RuntimeError, match=r"2 optimizer steps in a row had NaN/inf gradients \(step 8\)"):
        guard.on_pre_optimizer_step(None, state, None)
    assert trainer._metrics["train"]["train/nonfinite_update"] == [1.0, 1.0]
