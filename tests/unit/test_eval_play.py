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
