"""Server URLs for remote envs: `--env-urls`, and each data-parallel process's own share of them."""

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest

from envs.remote import urls_for_rank
from rl.cli import add_run_arguments, config_from_args, resolve_or_exit

URLS = [f"http://127.0.0.1:{8000 + i}" for i in range(5)]


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return parser, parser.parse_args(list(argv))


def test_env_urls_fill_the_env_kwargs_of_the_carla_config():
    _, args = parse("--env", "carla", "--env-urls", *URLS[:2], "--set", "grpo.max_steps=3")
    cfg = config_from_args(args)
    assert cfg.env.kwargs["urls"] == URLS[:2] and cfg.env.kwargs["scenario"] == "trolley_micro_escape_exists"
    assert cfg.model.tool_format == "gemma4" and cfg.rollout.max_turns == 10 and cfg.grpo.max_steps == 3
    assert cfg.rollout.chat_template_kwargs == {"enable_thinking": False}
    assert {"vision_tower", "embed_vision", "multi_modal_projector"} <= set(cfg.lora.exclude_modules)


def test_carla_without_servers_says_how_to_give_them(capsys):
    parser, args = parse("--env", "carla")
    with pytest.raises(SystemExit) as exit_:
        resolve_or_exit(parser, args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "a remote env needs at least one server URL (env.kwargs.urls, or --env-urls URL ...)" in err


def test_each_process_drives_servers_of_its_own():
    shares = [urls_for_rank(URLS, rank, 2) for rank in range(2)]
    assert shares == [URLS[0::2], URLS[1::2]]
    assert urls_for_rank(URLS, 0, 1) == URLS and urls_for_rank(URLS[0], 0, 1) == URLS[:1]
    with pytest.raises(ValueError, match=r"2 server URL\(s\) for 3 training processes: .* give at least 3"):
        urls_for_rank(URLS[:2], 0, 3)


def test_the_trainer_builds_each_processs_envs_on_its_share():
    from envs.driving.carla import CarlaEnv
    from rl.config import load_config
    from rl.trainer import EpisodeRollouts

    cfg = load_config(Path(__file__).parents[2] / "configs" / "carla.yaml", [f"env.kwargs.urls={URLS[:4]}"])
    seen = []
    for rank in range(2):
        rollouts = EpisodeRollouts(cfg, chat=None, env_cls=CarlaEnv)
        trainer = SimpleNamespace(accelerator=SimpleNamespace(process_index=rank, num_processes=2))
        episodes = rollouts.envs_for(3, trainer)  # more episodes than the process's servers: they queue
        assert {tuple(env.urls) for env in episodes} == {tuple(URLS[rank:4:2])}
        seen.append(set(episodes[0].urls))
    assert not seen[0] & seen[1]
