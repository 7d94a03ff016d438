"""A colocated engine in sleep mode goes back to sleep after every batch it generated for (the training
rollout's and the held-out eval's), also when the batch raised: the optimizer step needs its memory."""

import argparse

import pytest

from rl.cli import add_run_arguments, config_from_args
from rl.heldout import HeldOutEval
from rl.trainer import build_trainer


class EngineDown(RuntimeError):
    pass


class SleepingEngine:
    """Stands in for `VLLMBackend` with sleep mode on (CPU vLLM has none): records wake-ups and sleeps,
    and fails in `failing` ('generate' or 'update_weights')."""

    name = "vllm"

    def __init__(self, failing: str):
        self.failing = failing
        self.events: list[str] = []

    def wake_up(self) -> None:
        self.events.append("wake_up")

    def sleep(self) -> None:
        self.events.append("sleep")

    def update_weights(self, model, version=None) -> bool:
        if self.failing == "update_weights":
            raise EngineDown("weights could not be loaded")
        return False

    def generate(self, prompts, params):
        raise EngineDown("the engine died mid-batch")


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    out = tmp_path_factory.mktemp("sleep")
    return build_trainer(config_from_args(parser.parse_args([
        "--env", "sudoku", "--model", "tiny", "--name", "sleep", "--set", f"output_dir={out}",
        "--set", "log.wandb=off", "--set", "grpo.per_device_train_batch_size=4", "--set", "eval.during_training=2"])))


def training_batch(trainer):
    rollouts = trainer.rollout_func
    rollouts.rows = [{"seed": seed} for seed in range(4)]
    rollouts(["prompt"] * 4, trainer)


def held_out_eval(trainer):
    HeldOutEval(trainer, trainer.rollout_func).measure(1)


@pytest.mark.parametrize("failing", ["generate", "update_weights"])
@pytest.mark.parametrize("batch", [training_batch, held_out_eval])
def test_a_raising_batch_still_puts_the_engine_back_to_sleep(trainer, batch, failing):
    engine = SleepingEngine(failing)
    trainer.rollout_func.backend = engine
    with pytest.raises(EngineDown):
        batch(trainer)
    assert engine.events == ["wake_up", "sleep"]
    assert trainer.model.training  # the held-out eval's eval mode ended too
