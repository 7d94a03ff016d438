"""What a batch that raises leaves behind: a colocated engine in sleep mode goes back to sleep after every batch
it generated for (the training rollout's and the held-out eval's), also when the batch raised: the optimizer step
needs its memory; an engine whose wake-up raised is not put to sleep again, and the next batch wakes it again; the
held-out eval's envs are closed, and so are the training batch's, whose places in the rollout's env pool go to new
envs."""

import argparse
from typing import ClassVar

import pytest

from envs.sudoku import SudokuEnv
from rl.cli import add_run_arguments, config_from_args
from rl.generation import Generation
from rl.heldout import HeldOutEval
from rl.trainer import build_trainer


class EngineDown(RuntimeError):
    pass


class EnvCrashed(RuntimeError):
    pass


class CloseFailed(RuntimeError):
    pass


class SleepingEngine:
    """Stands in for `VLLMBackend` with sleep mode on (CPU vLLM has none): records wake-ups and sleeps,
    and fails in `failing` ('wake_up', 'generate' or 'update_weights'); with None, every turn is the stop token
    alone. A failing wake-up leaves the engine half awake, as vLLM's does when it raises part way through."""

    name = "vllm"

    def __init__(self, failing: str | None, stop_id: int | None = None):
        self.failing, self.stop_id = failing, stop_id
        self.events: list[str] = []

    def wake_up(self) -> None:
        self.events.append("wake_up")
        if self.failing == "wake_up":
            raise EngineDown("out of memory while the weights came back")

    def sleep(self) -> None:
        self.events.append("sleep")
        if self.failing == "wake_up":  # an error of its own, which would hide the wake-up's
            raise RuntimeError("sleep() on an engine whose wake-up did not finish")

    def update_weights(self, model, version=None) -> bool:
        if self.failing == "update_weights":
            raise EngineDown("weights could not be loaded")
        return False

    def generate(self, prompts, params):
        if self.failing == "generate":
            raise EngineDown("the engine died mid-batch")
        return [Generation([self.stop_id], [0.0], self.stop_id) for _ in prompts]


class CountingSudoku(SudokuEnv):
    """Sudoku that counts its close() calls. Of the instances made, the `fail_close`-th one's close() raises
    (after closing), and the `broken`-th one raises in every reset: a crashed env that stays crashed."""

    made: ClassVar[list] = []  # each test makes a subclass with its own list (the `counted` fixture)
    fail_close: int | None = None
    broken: int | None = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.index, self.closed = len(self.made), 0
        self.made.append(self)

    def reset(self, **kwargs):
        if self.index == self.broken:
            raise EnvCrashed("the env's process is gone")
        return super().reset(**kwargs)

    def close(self) -> None:
        self.closed += 1
        super().close()
        if self.index == self.fail_close:
            raise CloseFailed("the env's process would not stop")


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    out = tmp_path_factory.mktemp("sleep")
    return build_trainer(config_from_args(parser.parse_args([
        "--env", "sudoku", "--model", "tiny", "--name", "sleep", "--set", f"output_dir={out}",
        "--set", "log.wandb=off", "--set", "grpo.per_device_train_batch_size=4", "--set", "eval.during_training=2"])))


@pytest.fixture
def counted(trainer, monkeypatch):
    """The run's envs are a fresh CountingSudoku class (set up by the test), from an empty pool."""
    env_cls = type("Counted", (CountingSudoku,), {"made": []})
    monkeypatch.setattr(trainer.rollout_func, "env_cls", env_cls)
    monkeypatch.setattr(trainer.rollout_func, "env_pool", [])
    return env_cls


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


@pytest.mark.parametrize("batch", [training_batch, held_out_eval])
def test_an_engine_whose_wake_up_raised_is_not_put_to_sleep_and_wakes_at_the_next_batch(trainer, batch):
    engine = SleepingEngine("wake_up", trainer.processing_class.eos_token_id)
    trainer.rollout_func.backend = engine
    with pytest.raises(EngineDown, match="out of memory") as raised:
        batch(trainer)
    assert engine.events == ["wake_up"]
    assert any("did not wake up" in note for note in getattr(raised.value, "__notes__", []))
    engine.failing = None  # the next batch tries again
    batch(trainer)
    assert engine.events == ["wake_up", "wake_up", "sleep"]


def test_a_raising_held_out_batch_closes_every_env_and_keeps_its_error(trainer, counted):
    counted.fail_close = 0  # nor does a close() that raises too replace the batch's error, or skip the others
    trainer.rollout_func.backend = SleepingEngine("generate")
    with pytest.raises(EngineDown) as raised:
        held_out_eval(trainer)
    assert [env.closed for env in counted.made] == [1, 1]
    assert any("CloseFailed" in note for note in getattr(raised.value, "__notes__", []))


def test_an_env_close_that_raises_after_a_held_out_batch_is_raised_once_every_env_closed(trainer, counted):
    counted.fail_close = 0
    trainer.rollout_func.backend = SleepingEngine(None, trainer.processing_class.eos_token_id)
    with pytest.raises(CloseFailed):
        held_out_eval(trainer)
    assert [env.closed for env in counted.made] == [1, 1]


def test_the_training_batch_after_a_raising_one_gets_new_envs(trainer, counted):
    counted.broken = 0  # crashes in the raising batch; reused, it would crash the next batch's episode too
    rollouts = trainer.rollout_func
    rollouts.backend = SleepingEngine("generate")
    with pytest.raises(EngineDown):
        training_batch(trainer)
    raised_with = list(counted.made)
    assert [env.closed for env in raised_with] == [1] * 4  # any may still hold a server, or be mid-step
    rollouts.backend = SleepingEngine(None, trainer.processing_class.eos_token_id)
    training_batch(trainer)
    assert [t.info["env_error"] for t in rollouts.batch.trajectories] == [""] * 4
    assert not {id(env) for env in raised_with} & {id(env) for env in rollouts.env_pool}
