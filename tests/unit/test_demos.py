"""Demonstrations: the exact token layout of a rollout; evaluation: deterministic and sane."""

import json

import pytest

import envs
from envs.sudoku import SudokuExpert
from rl.config import load_config
from rl.demos import demonstrations
from rl.evaluation import summarize, wilson_interval
from rl.rollout import run_episodes
from rl.toolcalls import get_format


@pytest.fixture
def cfg():
    return load_config(None, ["model.name=tiny", "env.kwargs={size: 4, difficulty: medium}", "sft.num_episodes=6",
                              "rollout.max_turns=12", "rollout.max_completion_tokens=4096"])


def test_demo_layout_equals_the_rollout_of_the_same_actions(cfg, tiny_tokenizer, chat, scripted, monkeypatch):
    recorded = {}  # seed -> the expert's actions, in order

    class Recording(SudokuExpert):
        def __call__(self, env):
            action = super().__call__(env)
            recorded.setdefault(env._seed_for_test, []).append(action)
            return action

    original_reset = envs.sudoku.SudokuEnv.reset

    def reset(self, *, seed=None, options=None):
        self._seed_for_test = seed
        return original_reset(self, seed=seed, options=options)

    monkeypatch.setattr(envs.sudoku.SudokuEnv, "reset", reset)
    monkeypatch.setattr("envs.experts.EXPERTS", {envs.sudoku.SudokuEnv: Recording})
    demos = demonstrations(cfg, tiny_tokenizer)
    assert len(demos) == 6 and demos["seed"] == list(range(6))

    hermes = get_format("hermes")
    for row in demos:
        actions = recorded[row["seed"]]
        backend = scripted(lambda context, turn, a=actions: hermes.render_call(a[turn]))
        [traj] = run_episodes([envs.make("sudoku", size=4, difficulty="medium")], [row["seed"]], backend, chat,
                              cfg.rollout)
        assert row["input_ids"] == traj.prompt_ids + traj.completion_ids
        assert row["completion_mask"] == [0] * len(traj.prompt_ids) + traj.env_mask
        info = json.loads(row["info"])
        assert info["solved"] and info["format_errors"] == 0
        # loss only on the expert's calls: masked tokens decode to tool calls and end-of-turns only
        taught = tiny_tokenizer.decode([t for t, m in zip(row["input_ids"], row["completion_mask"]) if m])
        assert "<tool_response>" not in taught and taught.count("<tool_call>") == len(actions)


def test_demo_seeds_stay_inside_the_training_range(cfg, tiny_tokenizer):
    cfg.env.train_seeds = [0, 3]
    with pytest.raises(ValueError, match=r"sft.num_episodes=6 exceeds the training seed range \[0, 3\]"):
        demonstrations(cfg, tiny_tokenizer)


def test_eval_seeds_are_held_out():
    from rl.config import ConfigError

    with pytest.raises(ConfigError, match="reach into the held-out eval seeds"):
        load_config(None, ["env.train_seeds=[0, 20000000]"])


def test_wilson_interval_and_summary():
    low, high = wilson_interval(0, 50)
    assert low == 0.0 and 0.05 < high < 0.1
    low, high = wilson_interval(50, 50)
    assert high == 1.0 and 0.9 < low < 0.95
    infos = [{"solved": s, "model_turns": 2, "turns": 2, "invalid_actions": 1, "format_errors": 0, "tool_calls": 2,
              "episode_return": float(s)} for s in (True, False, False, True)]

    class T:
        def __init__(self, info):
            self.info = info

    summary = summarize([T(i) for i in infos], k=2)  # seeds [a, b] sampled twice: a solved, b solved once
    assert summary["solve_rate"] == 0.5 and summary["invalid_call_rate"] == 0.5 and summary["pass@2"] == 1.0


def test_rows_report_the_mean_of_each_numeric_fact_every_episode_has():
    infos = [{"solved": True, "max_tile": 64, "won": True, "ended": "won", "speedup": 2.0, "only_here": 1},
             {"solved": False, "max_tile": 32, "won": False, "ended": "no_moves", "speedup": float("nan")}]

    class T:
        def __init__(self, info):
            self.info = info

    facts = summarize([T(i) for i in infos])["facts"]
    assert facts == {"max_tile": 48.0, "solved": 0.5, "won": 0.5}  # text, NaN and one-sided facts left out
