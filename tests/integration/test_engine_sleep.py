"""What a batch that raises leaves behind: a colocated engine in sleep mode goes back to sleep after every batch
it generated for (the training rollout's and the held-out eval's), also when the batch raised: the optimizer step
needs its memory; an engine whose wake-up raised is not put to sleep again, and the next batch wakes it again; the
held-out eval's envs are closed, and so are the training batch's, whose places in the rollout's env pool go to new
envs. An env still mid-step in its thread (a step past its deadline, or one running when the batch raised) is ended
and closed once that step returns, never during it; so is one the training pool replaces after it crashed."""

import argparse
import threading
import time
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
    and fails in `failing` ('wake_up', 'generate', 'second generate' or 'update_weights'); otherwise every turn is
    `reply` (token ids) and the stop token. A failing wake-up leaves the engine half awake, as vLLM's does when it
    raises part way through."""

    name = "vllm"

    def __init__(self, failing: str | None, stop_id: int | None = None, reply: list[int] | None = None):
        self.failing, self.stop_id, self.reply = failing, stop_id, reply or []
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
        if self.failing == "generate" or self.failing == "second generate" and "generate" in self.events:
            raise EngineDown("the engine died mid-batch")
        self.events.append("generate")
        ids = [*self.reply, self.stop_id]
        return [Generation(ids, [0.0] * len(ids), self.stop_id) for _ in prompts]


class CountingSudoku(SudokuEnv):
    """Sudoku that counts its close() calls. Of the instances made, the close() of those in `fail_close` raises
    (after closing), the `broken`-th one raises in every reset: a crashed env that stays crashed, and the
    `held`-th one's first step waits for its `release` event: mid-step for as long as the test wants. Calls of
    close() or end_episode() made while a step runs are noted in `during_step`."""

    made: ClassVar[list] = []  # each test makes a subclass with its own list (the `counted` fixture)
    fail_close: tuple[int, ...] = ()
    broken: int | None = None
    held: int | None = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.index, self.closed, self.stepping, self.during_step = len(self.made), 0, False, []
        self.in_step, self.release, self.closed_now = threading.Event(), threading.Event(), threading.Event()
        self.made.append(self)

    def reset(self, **kwargs):
        if self.index == self.broken:
            raise EnvCrashed("the env's process is gone")
        return super().reset(**kwargs)

    def step(self, action):
        self.stepping = True
        try:
            if self.index == self.held and not self.in_step.is_set():
                self.in_step.set()
                self.release.wait(10)  # a bound, so that a failing test does not hang its thread
            return super().step(action)
        finally:
            self.stepping = False

    def close(self) -> None:
        self.closed += 1
        if self.stepping:
            self.during_step.append("close")
        super().close()
        self.closed_now.set()
        if self.index in self.fail_close:
            raise CloseFailed("the env's process would not stop")


class EndingSudoku(CountingSudoku):
    """CountingSudoku with an episode to end, as a remote env gives its server back: counts its end_episode()."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.ended = 0

    def end_episode(self) -> None:
        self.ended += 1
        if self.stepping:
            self.during_step.append("end_episode")


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    out = tmp_path_factory.mktemp("sleep")
    return build_trainer(config_from_args(parser.parse_args([
        "--env", "sudoku", "--model", "tiny", "--name", "sleep", "--set", f"output_dir={out}",
        "--set", "log.wandb=off", "--set", "grpo.per_device_train_batch_size=4", "--set", "eval.during_training=2"])))


def fresh_envs(trainer, monkeypatch, base: type) -> type:
    """The run's envs are a fresh subclass of `base` (set up by the test), from an empty pool."""
    env_cls = type(base.__name__, (base,), {"made": []})
    monkeypatch.setattr(trainer.rollout_func, "env_cls", env_cls)
    monkeypatch.setattr(trainer.rollout_func, "env_pool", [])
    return env_cls


@pytest.fixture
def counted(trainer, monkeypatch):
    return fresh_envs(trainer, monkeypatch, CountingSudoku)


@pytest.fixture
def ending(trainer, monkeypatch):
    return fresh_envs(trainer, monkeypatch, EndingSudoku)


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
    assert engine.events[:2] == ["wake_up", "wake_up"] and engine.events[-1] == "sleep"
    assert set(engine.events[2:-1]) == {"generate"}  # it generated this batch's turns, then slept once


def test_a_raising_held_out_batch_closes_every_env_and_keeps_its_error(trainer, counted):
    counted.fail_close = (0,)  # nor does a close() that raises too replace the batch's error, or skip the others
    trainer.rollout_func.backend = SleepingEngine("generate")
    with pytest.raises(EngineDown) as raised:
        held_out_eval(trainer)
    assert [env.closed for env in counted.made] == [1, 1]
    assert any("CloseFailed" in note for note in getattr(raised.value, "__notes__", []))


def test_an_env_close_that_raises_after_a_held_out_batch_is_raised_once_every_env_closed(trainer, counted):
    counted.fail_close = (0,)
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


def stepping_engine(trainer, failing: str | None = None) -> SleepingEngine:
    """An engine whose every turn calls show_board (after the run's response prefix), so every turn steps."""
    tokenizer = trainer.processing_class
    reply = tokenizer.encode('show_board", "arguments": {}}\n</tool_call>', add_special_tokens=False)
    return SleepingEngine(failing, tokenizer.eos_token_id, reply)


def wait_for(check, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)
    return check()


@pytest.mark.parametrize("batch", [training_batch, held_out_eval])
def test_an_env_mid_step_when_a_batch_raises_is_ended_and_closed_once_its_step_returns(trainer, ending, batch):
    ending.held = 0  # still in its first step when the engine dies on the batch's next turns
    trainer.rollout_func.backend = stepping_engine(trainer, "second generate")
    with pytest.raises(EngineDown):
        batch(trainer)
    held, *others = ending.made
    assert held.stepping and (held.ended, held.closed) == (0, 0)  # not pulled from under its step
    assert [(env.ended, env.closed) for env in others] == [(1, 1)] * len(others)
    held.release.set()
    assert held.closed_now.wait(5)
    assert [(env.ended, env.closed, env.during_step) for env in ending.made] == [(1, 1, [])] * len(ending.made)


def test_a_crashed_env_the_training_pool_replaces_is_closed_once_no_thread_steps_it(trainer, ending, monkeypatch,
                                                                                     caplog):
    ending.held, ending.broken = 0, 1  # a step past its deadline; an env that fails to reset
    ending.fail_close = (0, 1)  # neither close() that raises stops the run: one now, one once its step returns
    rollouts = trainer.rollout_func
    monkeypatch.setattr(rollouts.cfg.rollout, "step_timeout_s", 0.5)
    rollouts.backend = stepping_engine(trainer)
    training_batch(trainer)
    held, broken, *fine = ending.made[:4]  # then the two that took their places
    assert [bool(t.info["env_error"]) for t in rollouts.batch.trajectories] == [True, True, False, False]
    assert [id(env) for env in rollouts.env_pool[2:]] == [id(env) for env in fine]
    assert not {id(held), id(broken)} & {id(env) for env in rollouts.env_pool}
    assert (broken.ended, broken.closed) == (1, 1)
    assert any(r.name == "rl.trainer" and r.exc_info and r.exc_info[0] is CloseFailed for r in caplog.records)
    assert held.stepping and (held.ended, held.closed) == (0, 0)  # not pulled from under its step
    held.release.set()
    assert held.closed_now.wait(5)
    assert wait_for(lambda: any(r.name == "envs.threads" and r.exc_info and r.exc_info[0] is CloseFailed
                                for r in caplog.records))
    assert (held.ended, held.closed, held.during_step) == (1, 1, [])
    assert [env.closed for env in fine] == [0, 0]  # the pool plays on with them
