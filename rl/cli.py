"""Command-line options shared by the launch scripts, turned into a `RunConfig`."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import envs
from envs.sandbox.box import ALLOW_WEAK_VAR
from rewards import get_reward, parse_reward_spec
from rl.config import ConfigError, RunConfig, load_config, to_yaml
from rl.config_checks import check_names
from rl.resume import only_run

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", help="env name; loads configs/<env>.yaml when it exists")
    parser.add_argument("--config", help="YAML config file (default: configs/<env>.yaml)")
    parser.add_argument("--model", help="shortcut for --set model.name=...")
    parser.add_argument("--env-urls", nargs="+", metavar="URL",
                        help="the env's servers (remote envs such as carla; one per concurrent episode for "
                             "one-session servers): shortcut for --set env.kwargs.urls=[...]")
    parser.add_argument("--name", help="run name: outputs go to <output_dir>/<name>/")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value by dotted key, e.g. grpo.learning_rate=1e-5")
    parser.add_argument("--reward", dest="rewards", action="append", default=[], metavar="NAME_OR_PATH[=WEIGHT]",
                        help="add a reward: a built-in name or module.path:function, with an optional weight")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def config_from_args(args: argparse.Namespace, resume: bool = False) -> RunConfig:
    path = args.config
    if path is None and args.env and (CONFIGS / f"{args.env}.yaml").exists():
        path = CONFIGS / f"{args.env}.yaml"
    overrides = list(args.overrides)
    if args.env:
        overrides.insert(0, f"env.name={args.env!r}")  # quoted: "2048" is a name, not a number
    if args.model:
        overrides.append(f"model.name={args.model!r}")
    if getattr(args, "env_urls", None):
        overrides.append(f"env.kwargs.urls={json.dumps(args.env_urls)}")
    if args.name:
        overrides.append(f"name={args.name!r}")
    cfg = load_config(path, overrides)
    if resume and not cfg.name:  # only when there is no other run of the env to mean
        cfg.name = only_run(cfg.output_dir, cfg.env.name)
    if resume and not (Path(cfg.output_dir) / cfg.name).is_dir():
        raise ConfigError(f"--resume: no run {cfg.name!r} under {cfg.output_dir}/ (drop --resume to start it)")
    saved = Path(cfg.output_dir) / cfg.name / "config.yaml"
    if resume and saved.exists():  # continue the run as it was configured, plus any new overrides
        cfg = load_config(saved, [o for o in overrides if not o.startswith("env.name=")])
    for spec in args.rewards:
        name, weight = parse_reward_spec(spec)
        cfg.rewards[name] = weight
    if not cfg.name:
        cfg.name = f"{envs.short_name(cfg.env.name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg


def check_resolvable(cfg: RunConfig) -> None:
    """Fail on an unknown env, a bad reward path or signature, an unknown model, tool-call format or chat
    template now, before any model loads.

    User modules (`my_rewards:fn`, `my_envs:MyEnv`) are imported from the current
    directory or from installed packages.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    env_cls = envs.resolve(cfg.env.name)
    try:
        envs.check_kwargs(cfg.env.kwargs)
        env_cls(**cfg.env.kwargs).close()  # built only to see that it accepts its kwargs
    except Exception as e:  # the user's env refusing its kwargs, however it says so
        what = str(e) if isinstance(e, (TypeError, ValueError)) else f"{type(e).__name__}: {e}"
        raise ConfigError(f"env {cfg.env.name!r} rejects env.kwargs {cfg.env.kwargs}: {what}") from e
    for spec in cfg.rewards:
        get_reward(spec)
    check_names(cfg)  # after the env's and rewards' modules, which may register tool-call formats


def apply_run_environment(cfg: RunConfig) -> None:
    """Set what the run's config says in this process's environment, where env worker processes see it too
    (`env.sandbox_allow_weak`). Only in the process that runs: checking a config (a sweep checks all its
    points in one process) changes nothing."""
    if cfg.env.sandbox_allow_weak:
        os.environ[ALLOW_WEAK_VAR] = "1"


@contextlib.contextmanager
def run_stop_exits(parser: argparse.ArgumentParser):
    """A `RunStop` raised while a run plays (the sandbox refusing model code, say) ends it with its message in
    one line and exit status 2, as a bad config does, not with a traceback."""
    try:
        yield
    except envs.RunStop as e:
        parser.exit(2, f"error: {' '.join(str(e).split())}\n")


def resolve_or_exit(parser: argparse.ArgumentParser, args: argparse.Namespace, resume: bool = False) -> RunConfig:
    """The run's config, checked (values, env, env kwargs, rewards, model) before any model library is
    imported; exit 2 with the error in one line.

    With `--dry-run`, prints the resolved config and exits 0.
    """
    try:
        cfg = config_from_args(args, resume=resume)
        check_resolvable(cfg)
    except (ConfigError, ValueError) as e:
        parser.exit(2, f"error: {' '.join(str(e).split())}\n")  # one line, however the message was wrapped
    if getattr(args, "dry_run", False):
        print_config(cfg)
        parser.exit(0)
    apply_run_environment(cfg)
    return cfg


def print_config(cfg: RunConfig) -> None:
    print(to_yaml(cfg), end="")
