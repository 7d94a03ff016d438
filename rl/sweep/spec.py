"""A sweep file (`configs/sweeps/*.yaml`), parsed and checked as strictly as a run config.

    name: sudoku-lr-credit          # default: the file's name; trials go to <output_dir>/<name>/<trial>/
    base: {env: sudoku, model: gemma-3-270m, set: {grpo.max_steps: 50}}   # and config: FILE
    launcher: accelerate            # or python
    grid: {grpo.learning_rate: [1.0e-6, 1.0e-5], grpo.step_advantage_weight: [0.0, 1.0]}
    seeds: [0, 1, 2]
    objective: {metric: heldout/solve_rate, read: last, direction: maximize}

`random:` (RandomSampler) or `optuna:` (TPESampler) instead of `grid:` take ranges
(`{low: 1.0e-6, high: 1.0e-4, log: true}`, integer bounds for an integer key) or `{choices: [...]}`,
with `trials:` points. Every point of the space is resolved into the run config it would train with
(dry, no model), so a swept key the run config does not know is refused before any trial starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rl.config import ConfigError, parse_yaml, read_yaml
from rl.rollout import STEP_FACTS

TOP_KEYS = ("name", "base", "launcher", "grid", "random", "optuna", "trials", "seeds", "objective", "pruner")
BASE_KEYS = ("env", "config", "model", "set")
SPACES = ("grid", "random", "optuna")  # optuna: TPE
LAUNCHERS = ("accelerate", "python")
READS = ("last", "mean_last", "eval")
DIRECTIONS = ("maximize", "minimize")
PRUNERS = {"median": "MedianPruner", "percentile": "PercentilePruner", "hyperband": "HyperbandPruner",
           "successive_halving": "SuccessiveHalvingPruner", "threshold": "ThresholdPruner"}
# Run keys a sweep sets itself, per trial
RESERVED = {"name": "the sweep names each trial's run", "output_dir": "set it under base.set (the sweep's runs go "
            "to <output_dir>/<sweep name>/)", "grpo.seed": "list the seeds under seeds:",
            "log.group": "the sweep's wandb group is its name"}
# What a GRPO run logs in metrics.jsonl (TRL's GRPOTrainer, rl/trainer.py, rl/trl_hooks.py, rl/heldout.py);
# rewards/<name>/mean|std come from the run's rewards; rollout/engine_* not on rollout.backend=vllm-server.
TRAIN_METRICS = (
    "reward", "reward_std", "loss", "grad_norm", "learning_rate", "entropy", "frac_reward_zero_std", "num_tokens",
    "step_time", "kl", "train/nonfinite_update", "completions/mean_length", "completions/min_length",
    "completions/max_length", "completions/clipped_ratio", "completions/mean_terminated_length",
    *(f"env/{k}" for k in (*STEP_FACTS, "crashed", "generation_failed")), "rollout/tokens_per_s",
    "rollout/generation_s", "rollout/env_s", "rollout/wall_s", "rollout/engine_steps", "rollout/engine_busy_s",
    "step_advantage/shared_state_turns", "step_advantage/abs_mean")
HELDOUT_METRICS = ("heldout/solve_rate", "heldout/mean_return", "heldout/invalid_call_rate",
                   "heldout/format_error_rate")
# What an eval.py result holds (rl/evaluation.py summarize_infos), for `read: eval`
EVAL_METRICS = ("solve_rate", "mean_return", "mean_turns", "invalid_call_rate", "format_error_rate", "tool_call_rate")


class SweepError(ValueError):
    pass


@dataclass
class Range:
    """One key of a random/optuna space: a float or int range (optionally log-scaled), or choices."""

    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list | None = None

    @property
    def kind(self) -> str:
        if self.choices is not None:
            return "choice"
        return "int" if isinstance(self.low, int) and isinstance(self.high, int) else "float"

    def examples(self) -> list:
        """The values to resolve against the run config: the bounds, or every choice."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def describe(self) -> str:
        if self.choices is not None:
            return f"one of {self.choices}"
        return f"{'log-' if self.log else ''}{self.kind} in [{self.low}, {self.high}]"


@dataclass
class Objective:
    metric: str = "heldout/solve_rate"
    read: str = "last"  # last value | mean of the last `last_n` values | eval.py on the trial's final/
    last_n: int = 1
    episodes: int = 0  # read: eval; 0 = the run config's eval.episodes
    direction: str = "maximize"

    def describe(self) -> str:
        return {"last": f"last {self.metric}", "mean_last": f"mean of last {self.last_n} {self.metric}",
                "eval": f"eval.py {self.metric}"}[self.read]


@dataclass
class SweepSpec:
    name: str
    path: Path
    env: str
    config: str | None = None
    model: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    launcher: str = "accelerate"
    space_kind: str = "grid"
    grid: dict[str, list] = field(default_factory=dict)
    space: dict[str, Range] = field(default_factory=dict)
    trials: int = 0
    seeds: list[int] = field(default_factory=lambda: [0])
    objective: Objective = field(default_factory=Objective)
    pruner: dict | None = None
    out: Path = Path("runs")  # <output_dir>/<name>, set once the base run resolves

    @property
    def keys(self) -> list[str]:
        return list(self.grid or self.space)

    def points(self) -> list[dict]:
        """Every point of a grid, in the order of the file's lists (the first key varies slowest)."""
        import itertools

        return [dict(zip(self.grid, values)) for values in itertools.product(*self.grid.values())]

    def run_args(self, params: dict, seed: int, name: str) -> list[str]:
        """launch/grpo.py's arguments for one trial: the base run, the point, the seed and the sweep's group."""
        args = ["--env", self.env] + (["--config", self.config] if self.config else [])
        args += ["--model", self.model] if self.model else []
        args += ["--name", name] if name else []
        sets = {**self.overrides, **params, "grpo.seed": seed, "output_dir": str(self.out), "log.group": self.name}
        tags = [self.name] + [f"{k}={_flow(v)}" for k, v in params.items()]
        sets["log.tags"] = list(self.overrides.get("log.tags", [])) + tags
        for key, value in sets.items():
            args += ["--set", f"{key}={_flow(value)}"]
        return args


def _flow(value: Any) -> str:
    """A value as a --set override's text that parses back to it: plain where that works (off, 0.5, sudoku),
    else YAML flow style (1e-05 -> 1.0e-05, lists)."""
    plain = str(value).lower() if isinstance(value, bool) else str(value)
    if not isinstance(value, (list, dict)) and parse_yaml(plain) == value and type(parse_yaml(plain)) is type(value):
        return plain
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).strip()
    return text.removesuffix("...").strip()


def load_sweep(path: str | Path, resolve: bool = True, name: str | None = None) -> SweepSpec:
    """Parse and check a sweep file; SweepError names the first problem. With `resolve`, every point's run
    config is resolved too (the report, reading a finished sweep's copy, skips that). A file without name:
    is named `name`, by default the file's own name."""
    path = Path(path)
    try:
        data = read_yaml(path)
    except ConfigError as e:
        raise SweepError(str(e).replace("config file", "sweep file", 1)) from None
    if not isinstance(data, dict):
        raise SweepError(f"sweep file {str(path)!r} must hold a mapping at the top level")
    _known(data, TOP_KEYS, "sweep key")
    spec = SweepSpec(name=str(data.get("name") or name or path.stem), path=path, **_base(data.get("base")))
    spec.launcher = _choice(data.get("launcher", "accelerate"), LAUNCHERS, "launcher")
    _space(spec, data)
    spec.seeds = _seeds(data.get("seeds", [0]))
    spec.objective = _objective(data.get("objective"))
    spec.pruner = _pruner(data.get("pruner"))
    if resolve:
        check_against_run_config(spec)
    return spec


def _known(data: dict, known: tuple, what: str) -> None:
    for key in data:
        if key not in known:
            raise SweepError(f"unknown {what} {key!r} (known: {', '.join(known)})")


def _choice(value: Any, accepted: tuple, what: str) -> str:
    if value not in accepted:
        raise SweepError(f"unknown {what} {value!r} (accepted: {', '.join(accepted)})")
    return value


def _base(base: Any) -> dict:
    if not isinstance(base, dict) or not base.get("env"):
        raise SweepError(f"sweep key 'base' must be a mapping with at least env: (and config:, model:, set:), "
                         f"got {base!r}")
    _known(base, BASE_KEYS, "base key")
    sets = base.get("set") or {}
    if not isinstance(sets, dict):
        raise SweepError(f"base.set must map dotted run keys to values (grpo.max_steps: 50), got {sets!r}")
    for key in sets:
        if key in RESERVED and key != "output_dir":
            raise SweepError(f"base.set key {key!r} is set by the sweep: {RESERVED[key]}")
    return {"env": str(base["env"]), "config": base.get("config"), "model": base.get("model"), "overrides": sets}


def _space(spec: SweepSpec, data: dict) -> None:
    given = [k for k in SPACES if k in data]
    if len(given) != 1:
        raise SweepError(f"a sweep needs exactly one space, grid:, random: or optuna: (got {given or 'none'})")
    spec.space_kind = kind = given[0]
    space = data[kind]
    if not isinstance(space, dict) or not space:
        raise SweepError(f"empty space: {kind}: needs at least one dotted run key, e.g. grpo.learning_rate")
    for key in space:
        if key in RESERVED:
            raise SweepError(f"{kind} key {key!r} cannot be swept: {RESERVED[key]}")
    if kind == "grid":
        for key, values in space.items():
            if not isinstance(values, list) or not values:
                raise SweepError(f"grid key {key!r} needs a non-empty list of values, got {values!r}")
            if not all(isinstance(v, (int, float, str, bool)) for v in values):
                raise SweepError(f"grid key {key!r}: values must be numbers, strings or booleans, got {values!r}")
        spec.grid = dict(space)
        if "trials" in data:
            raise SweepError("trials: is for random: and optuna: spaces; a grid runs every point")
        return
    spec.space = {key: _range(kind, key, value) for key, value in space.items()}
    spec.trials = data.get("trials")
    if not isinstance(spec.trials, int) or isinstance(spec.trials, bool) or spec.trials < 1:
        raise SweepError(f"a {kind}: space needs trials: N (points to sample, N >= 1), got {spec.trials!r}")


def _range(kind: str, key: str, value: Any) -> Range:
    if not isinstance(value, dict):
        raise SweepError(f"{kind} key {key!r} needs {{low: L, high: H[, log: true][, step: S]}} or "
                         f"{{choices: [...]}}, got {value!r}")
    _known(value, ("low", "high", "log", "step", "choices"), f"{kind} option of {key!r}")
    if "choices" in value:
        if not isinstance(value["choices"], list) or not value["choices"] or len(value) > 1:
            raise SweepError(f"{kind} key {key!r}: choices must be a non-empty list, alone, got {value!r}")
        if any(isinstance(c, (list, dict)) for c in value["choices"]):
            raise SweepError(f"{kind} key {key!r}: choices must be numbers, strings, booleans or null (Optuna stores "
                             f"no others), got {value['choices']!r}")
        return Range(choices=value["choices"])
    low, high = (_number(value.get(b), f"{kind} key {key!r} {b}") for b in ("low", "high"))
    r = Range(low=low, high=high, log=bool(value.get("log", False)), step=value.get("step"))
    if not low < high or (r.log and low <= 0):
        raise SweepError(f"{kind} key {key!r} needs low < high{' and low > 0 for log' if r.log else ''}, "
                         f"got [{low}, {high}]")
    if r.step is not None:
        if r.log:
            raise SweepError(f"{kind} key {key!r}: step and log: true cannot be combined (Optuna samples a log range "
                             "without steps)")
        r.step = _number(r.step, f"{kind} key {key!r} step")
        if r.step <= 0:
            raise SweepError(f"{kind} key {key!r}: step must be > 0, got {r.step!r}")
    return r


def _number(value: Any, what: str) -> float | int:
    if isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads 1e-5 as a string
        except ValueError:
            pass
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise SweepError(f"{what} must be a number, got {value!r}")
    return value


def _seeds(seeds: Any) -> list[int]:
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise SweepError(f"seeds: must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"seeds: lists a seed twice: {seeds}")
    return seeds


def _objective(data: Any) -> Objective:
    if not isinstance(data, dict):
        raise SweepError(f"sweep key 'objective' must be a mapping (metric:, read:, direction:), got {data!r}")
    _known(data, tuple(f.name for f in dataclasses.fields(Objective)), "objective key")
    obj = Objective(**data)
    _choice(obj.read, READS, "objective read")
    _choice(obj.direction, DIRECTIONS, "objective direction")
    if not isinstance(obj.last_n, int) or obj.last_n < 1 or (obj.last_n > 1 and obj.read != "mean_last"):
        raise SweepError(f"objective last_n={obj.last_n!r} must be an integer >= 1, and only goes with read: mean_last")
    if not isinstance(obj.episodes, int) or obj.episodes < 0 or (obj.episodes and obj.read != "eval"):
        raise SweepError(f"objective episodes={obj.episodes!r} must be an integer >= 0, and only goes with read: eval")
    return obj


def _pruner(data: Any) -> dict | None:
    if data is None:
        return None
    if not isinstance(data, dict) or data.get("type") not in PRUNERS:
        raise SweepError(f"pruner: needs type: one of {', '.join(PRUNERS)} (and that pruner's options), got {data!r}")
    return dict(data)


def check_against_run_config(spec: SweepSpec) -> None:
    """Resolve the base run with every point's values (grid points; a range's bounds; every choice), as
    launch/grpo.py would, without loading a model; check the objective's metric against that run."""
    from rl.cli import check_resolvable, config_from_args

    if spec.grid:
        points = spec.points()
    else:
        points = [{k: r.examples()[i % len(r.examples())] for k, r in spec.space.items()}
                  for i in range(max(len(r.examples()) for r in spec.space.values()))]
    cfg = None
    for params in points:
        args = spec.run_args(params, spec.seeds[0], "")
        sets = [a for a, b in zip(args[1:], args) if b == "--set" and not a.startswith("output_dir=")]
        if "output_dir" in spec.overrides:  # the base run's; the sweep's runs go to <it>/<sweep name>
            sets.append(f"output_dir={_flow(spec.overrides['output_dir'])}")
        ns = argparse.Namespace(env=spec.env, config=spec.config, model=spec.model, overrides=sets, name="trial",
                                rewards=[], env_urls=None)
        try:
            cfg = config_from_args(ns)
            check_resolvable(cfg)
        except (ConfigError, ValueError) as e:
            where = ", ".join(f"{k}={v}" for k, v in params.items())
            raise SweepError(f"{spec.path}: the run at {where} is refused: {e}") from e
    spec.out = Path(cfg.output_dir) / spec.name
    _check_metric(spec.objective, cfg)
    if spec.pruner and spec.objective.read == "eval" and not cfg.eval.every_steps:  # it watches heldout/solve_rate
        raise SweepError("a pruner with read: eval watches heldout/solve_rate during training, which is logged only "
                         "with eval.every_steps > 0: set it under base.set (e.g. eval.every_steps: 10)")


def _check_metric(obj: Objective, cfg) -> None:
    if obj.read == "eval":
        if obj.metric not in EVAL_METRICS:
            raise SweepError(f"unknown objective metric {obj.metric!r} for read: eval "
                             f"(known: {', '.join(EVAL_METRICS)})")
        return
    known = TRAIN_METRICS + HELDOUT_METRICS + tuple(f"rewards/{r}/{s}" for r in cfg.rewards for s in ("mean", "std"))
    if obj.metric not in known:
        import difflib

        close = difflib.get_close_matches(obj.metric, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SweepError(f"unknown objective metric {obj.metric!r}: not logged in metrics.jsonl "
                         f"(e.g. {', '.join(TRAIN_METRICS[:2] + HELDOUT_METRICS[:1])}, rewards/<name>/mean){hint}")
    if obj.metric.startswith("heldout/") and not cfg.eval.every_steps:
        raise SweepError(f"objective metric {obj.metric!r} is logged only with eval.every_steps > 0: set it under "
                         f"base.set (e.g. eval.every_steps: 10)")
