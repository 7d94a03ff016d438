"""Reward functions are tried on real episodes (the env's expert, its baseline, a tool-less policy, a policy
calling a tool the env lacks) before the model loads: a crash stops the run naming the reward, a constant reward
is named in a warning."""

import pytest

from rl.config import ConfigError, load_config


def crashes(prompts, completions, **kwargs):
    return [len(c["content"]) for c in completions]  # treats a completion (a list of messages) as one message


def reads_a_missing_fact(prompts, completions, **kwargs):
    return [float(kwargs.get("board_solved") or 0.0) for _ in completions]


def config(tmp_path, reward):
    cfg = load_config(None, ["model.name=tiny", "env.name=sudoku", f"output_dir={tmp_path}", "name=pre",
                             "log.wandb=off", "rewards.sudoku_progress=0.5", "rewards.format_valid=0.2",
                             "rewards.invalid_action_penalty=0.1"])
    cfg.rewards[f"tests.integration.test_preflight:{reward}"] = 1.0
    return cfg


def test_a_crashing_reward_stops_the_run_before_the_model_loads(tmp_path, monkeypatch):
    import rl.trainer

    monkeypatch.setattr(rl.trainer, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(ConfigError, match=r"(?s)reward 'crashes' failed on 16 expert, baseline, tool-less and "
                                          r"wrong-tool episodes.*TypeError"):
        rl.trainer.build_trainer(config(tmp_path, "crashes"))


def test_a_reward_constant_over_real_episodes_is_named_and_the_built_ins_are_not(tmp_path, capsys):
    from rl.evaluation import chat_for
    from rl.models import load_tokenizer
    from rl.preflight import check_rewards
    from rl.trainer import resolve_rewards

    cfg = config(tmp_path, "reads_a_missing_fact")
    warnings = check_rewards(cfg, chat_for(cfg, load_tokenizer(cfg.model)), resolve_rewards(cfg)[0])
    [warning] = warnings
    assert ("'reads_a_missing_fact' gave every one of 16 expert, baseline, tool-less and wrong-tool episodes 0"
            in warning)
    assert "progress" in warning and "solved" in warning  # the facts it could have read


def half_nan(prompts, completions, **kwargs):
    return [float("nan") if i % 2 else 0.0 for i in range(len(completions))]


def test_a_nan_reward_stops_the_run_before_the_model_loads_naming_reward_and_episode(tmp_path, monkeypatch):
    import rl.trainer

    monkeypatch.setattr(rl.trainer, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(ConfigError, match=r"(?s)reward 'half_nan' failed.*NonFiniteReward: reward 'half_nan' "
                                          r"returned nan for episode 1 of 16.*grpo\.nonfinite_rewards=drop"):
        rl.trainer.build_trainer(config(tmp_path, "half_nan"))


def test_dropped_nan_rewards_pass_the_preflight(tmp_path):
    from rl.evaluation import chat_for
    from rl.models import load_tokenizer
    from rl.preflight import check_rewards
    from rl.trainer import resolve_rewards

    cfg = config(tmp_path, "half_nan")
    cfg.grpo.nonfinite_rewards = "drop"
    warnings = check_rewards(cfg, chat_for(cfg, load_tokenizer(cfg.model)), resolve_rewards(cfg)[0])
    assert [w for w in warnings if "'half_nan' gave every one of 16" in w]  # its finite half: all 0.0


def test_the_readme_sudoku_configs_built_in_rewards_pass_without_a_warning(tmp_path):
    """configs/sudoku.yaml (the README's first run): its response prefix makes the tool-less policy's text a
    malformed call, not an env step, and random legal moves on its easy puzzles take no invalid action, so
    only the policy calling a tool the env lacks shows `invalid_action_penalty` an invalid action."""
    from pathlib import Path

    from rl.evaluation import chat_for
    from rl.models import load_tokenizer
    from rl.preflight import check_rewards
    from rl.trainer import resolve_rewards

    path = Path(__file__).parents[2] / "configs" / "sudoku.yaml"
    cfg = load_config(path, ["model.name=tiny", f"output_dir={tmp_path}", "log.wandb=off"])
    assert "invalid_action_penalty" in cfg.rewards and cfg.rollout.response_prefix
    assert check_rewards(cfg, chat_for(cfg, load_tokenizer(cfg.model)), resolve_rewards(cfg)[0]) == []


def test_a_tool_format_that_cannot_write_a_wrong_tool_call_skips_only_that_probe(tmp_path):
    """A custom format that writes one tool's argument (`first_digit`: the digit itself) has no text for a call to
    a tool the env lacks: the preflight plays the other probes and names what it played."""
    import tests.integration.pick_env  # noqa: F401 -- registers the format
    from rl.evaluation import chat_for
    from rl.models import load_tokenizer
    from rl.preflight import check_rewards
    from rl.trainer import resolve_rewards

    cfg = load_config(None, ["model.name=tiny", "env.name=tests.integration.pick_env:PickEnv", "rollout.max_turns=3",
                             "model.tool_format=first_digit", f"output_dir={tmp_path}", "log.wandb=off"])
    cfg.rewards = {"tests.integration.test_preflight:reads_a_missing_fact": 1.0}
    [warning] = check_rewards(cfg, chat_for(cfg, load_tokenizer(cfg.model)), resolve_rewards(cfg)[0])
    assert "'reads_a_missing_fact' gave every one of 4 tool-less episodes 0," in warning  # PickEnv has no expert
