import threading

import pytest

import envs
from envs.base import RunStop
from envs.sudoku import SudokuEnv


@pytest.fixture
def closed(monkeypatch):
    """The envs eval builds are Sudoku envs that record their close()."""
    closed = []

    class Counting(SudokuEnv):
        def close(self):
            closed.append(self)
            super().close()

    monkeypatch.setattr(envs, "resolve", lambda name: Counting)
    return closed


def _play(policy_name, seeds, wrap=None):
    from rl.config import load_config
    from rl.evaluation import chat_for, make_policy, play
    from rl.models import load_tokenizer

    cfg = load_config("configs/sudoku-sft.yaml", ["model.name=tiny", "rollout.max_turns=3"])
    policy = make_policy(cfg, policy_name)
    return play(cfg, chat_for(cfg, load_tokenizer(cfg.model)), seeds, policy=wrap(policy) if wrap else policy,
                batch_size=2)


def test_eval_closes_every_env_it_built(closed):
    played = _play("random", [0, 1, 2])
    assert len(played) == 3 and len(closed) == 3 and len({id(env) for env in closed}) == 3


def test_eval_closes_its_envs_when_a_batch_raises(closed):
    def stopping(policy):
        def act(env):
            raise RunStop("the env server went away")  # ends the eval, not just the episode
        return act

    with pytest.raises(RunStop, match="went away"):
        _play("random", [0, 1, 2], wrap=stopping)
    assert len(closed) == 2  # the first batch of 2, the one that raised


def test_checking_a_config_closes_the_env_it_builds_to_try_its_kwargs(closed):
    from rl.cli import check_resolvable
    from rl.config import load_config

    check_resolvable(load_config("configs/sudoku-sft.yaml", ["model.name=tiny"]))
    assert len(closed) == 1


def test_eval_closes_the_envs_it_built_before_one_refused_to_start(monkeypatch, closed):
    built = []

    class Refusing(envs.resolve("sudoku")):  # the fixture's counting env; the fifth one built fails to start
        def __init__(self, **kwargs):
            built.append(self)
            if len(built) == 5:
                raise ConnectionError("env server refused the session")
            super().__init__(**kwargs)

    monkeypatch.setattr(envs, "resolve", lambda name: Refusing)
    with pytest.raises(ConnectionError, match="refused"):
        _play("random", [0, 1, 2, 3])  # the policy's probe env, then batches of 2: the second batch's second fails
    assert closed == built[1:4]  # the first batch's two after it played, then the one built before the failure


class HeldStep(SudokuEnv):
    """Sudoku whose step, once `hold` is set, waits for `release` (mid-step for as long as a test wants), and
    which counts its end_episode() and close() calls and notes any made while a step was running."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hold, self.stepping, self.ended, self.closed, self.during_step = False, False, 0, 0, []
        self.in_step, self.release, self.closed_now = threading.Event(), threading.Event(), threading.Event()

    def step(self, action):
        self.stepping = True
        try:
            if self.hold:
                self.in_step.set()
                self.release.wait(10)  # a bound, so that a failing test does not hang its thread
            return super().step(action)
        finally:
            self.stepping = False

    def end_episode(self):  # as a remote env gives its server back
        self.ended += 1
        if self.stepping:
            self.during_step.append("end_episode")

    def close(self):
        self.closed += 1
        if self.stepping:
            self.during_step.append("close")
        super().close()
        self.closed_now.set()


def test_an_env_mid_step_when_an_eval_batch_raises_is_ended_and_closed_once_its_step_returns(monkeypatch):
    built = []

    class Held(HeldStep):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            built.append(self)

    def stopping(policy):
        def act(env):
            if not any(e.hold for e in built):
                env.hold = True  # the first env asked for a move is still in that step when the batch raises
            elif env.turns:
                assert next(e for e in built if e.hold).in_step.wait(5)
                raise RunStop("the env server went away")
            return policy(env)
        return act

    monkeypatch.setattr(envs, "resolve", lambda name: Held)
    with pytest.raises(RunStop, match="went away"):
        _play("random", [0, 1], wrap=stopping)
    _probe, *batch = built  # the policy's probe env, then the batch's two
    [held] = [env for env in batch if env.hold]
    [other] = [env for env in batch if not env.hold]
    assert (other.ended, other.closed) == (1, 1)
    assert (held.ended, held.closed) == (0, 0) and held.stepping  # not pulled from under its step
    held.release.set()
    assert held.closed_now.wait(5)
    assert (held.ended, held.closed) == (1, 1) and held.during_step == [] == other.during_step


def test_an_env_a_policy_is_reading_when_an_eval_batch_raises_is_closed_once_the_policy_returns(monkeypatch):
    """A reference policy reads its env in the rollout's generation thread. When another episode's step ends the
    batch (RunStop) while a policy turn is still reading its env, that env is ended and closed only once the
    policy has returned, as for an env step past its deadline."""
    built, reading, release = [], threading.Event(), threading.Event()

    class Env(HeldStep):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            built.append(self)

        def step(self, action):
            if self is built[2]:  # the batch's second episode: its first step ends the batch mid policy turn
                assert reading.wait(5)
                raise RunStop("the env server went away")
            return super().step(action)

    def holding(policy):
        def act(env):
            if env is built[1] and env.turns:  # the batch's first episode, its second turn: the policy reads on
                env.stepping = True  # close() and end_episode() note a call made now
                reading.set()
                release.wait(10)  # a bound, so that a failing test does not hang its thread
                env.stepping = False
            return policy(env)
        return act

    monkeypatch.setattr(envs, "resolve", lambda name: Env)
    with pytest.raises(RunStop, match="went away"):
        _play("random", [0, 1], wrap=holding)
    _probe, read, stopped = built
    assert (stopped.ended, stopped.closed) == (1, 1)
    assert (read.ended, read.closed) == (0, 0)  # not pulled from under the policy
    release.set()
    assert read.closed_now.wait(5)
    assert (read.ended, read.closed) == (1, 1) and read.during_step == []
