"""Checks of a run config's values beyond their types: ranges, finiteness, known names, keys that
must fit together, and (at resolve time) the model, tool-call format and chat template it names.

`check_config` runs on every loaded config (`rl.config.load_config`); `check_names` runs where the
launch scripts resolve a config (`rl.cli.check_resolvable`), once the env's and rewards' modules are
imported (they may register tool-call formats). Messages name the key, the value and what is
accepted: `grpo.learning_rate=nan: must be a finite number > 0`. Imports no torch; TRL only for a
`grpo.*` key that toolgym does not define itself (it may be a field of TRL's GRPOConfig).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib.util
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from rl.config import ConfigError, RunConfig

BACKENDS = ("hf", "vllm", "vllm-server")
VLLM_DTYPES = ("auto", "float32", "bfloat16", "float16")
MODEL_DTYPES = VLLM_DTYPES
AUTOCAST = ("none", "bfloat16")  # model.autocast
LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")  # those that need no further settings
LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo")
SCALE_REWARDS = ("group", "batch", "none")
WANDB_MODES = ("auto", "online", "offline", "off")
NONFINITE_REWARDS = ("error", "drop")  # grpo.nonfinite_rewards: stop the run, or count and leave the value out
MICRO_BATCHES = ("auto", "by_length", "shuffled")  # grpo.micro_batches
ADMIT = ("each", "together")  # rollout.vllm.admit
# model.attn_implementation: transformers' own names, rl/attention.py's, or a hub kernel ('org/repo')
ATTN_IMPLEMENTATIONS = ("sdpa", "sdpa_bf16", "sdpa_cudnn", "eager", "flex_attention", "flash_attention_2",
                        "flash_attention_3", "flash_attention_4", "paged|eager")
BUILT_IN_MODELS = ("gemma-3-270m", "tiny", "tiny-vlm")  # rl/models.py builds or converts these
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class Rule(NamedTuple):
    accepts: Callable[[Any], bool]
    says: str  # what is accepted


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def above(low: float) -> Rule:
    return Rule(lambda v: _finite(v) and v > low, f"must be a finite number > {low:g}")


def at_least(low: float, integer: bool = False) -> Rule:
    kind = "an integer" if integer else "a finite number"
    return Rule(lambda v: _finite(v) and v >= low, f"must be {kind} >= {low:g}")


def within(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Rule:
    def accepts(v: Any) -> bool:
        return _finite(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    return Rule(accepts, f"must be a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")


def one_of(names: tuple[str, ...]) -> Rule:
    return Rule(lambda v: v in names, f"accepted: {', '.join(names)}")


def known_attn_implementation(name: Any) -> bool:
    return name in ATTN_IMPLEMENTATIONS or bool(HUB_ID.fullmatch(str(name)))


def check_attn_implementation(name: str, key: str = "model.attn_implementation") -> None:
    """The config's rule for an attention implementation (its message too), for one named elsewhere (a model
    section built in code, a bench option)."""
    if not known_attn_implementation(name):
        raise ConfigError(f"{key}={name!r}: unknown attention implementation "
                          f"({RULES['model.attn_implementation'].says})")


COUNT, POSITIVE, NON_NEGATIVE = at_least(1, integer=True), above(0), at_least(0)
SHARE = within(0, 1)
SEED = Rule(lambda v: _finite(v) and 0 <= v < 2**32, "must be an integer in [0, 2**32)")  # numpy's range

# Every numeric or named setting whose range does not depend on another key, by dotted key. None is
# accepted where the field's type allows it (rollout.vllm.kv_cache_gib: vLLM sizes the cache itself).
RULES: dict[str, Rule] = {
    "model.dtype": one_of(MODEL_DTYPES), "model.autocast": one_of(AUTOCAST),
    "model.attn_implementation": Rule(known_attn_implementation,
                                      f"accepted: {', '.join(ATTN_IMPLEMENTATIONS)}, or a hub kernel 'org/repo'"),
    "lora.r": COUNT, "lora.alpha": POSITIVE, "lora.dropout": within(0, 1, high_open=True),
    "rollout.max_turns": COUNT, "rollout.max_new_tokens": COUNT, "rollout.max_completion_tokens": COUNT,
    "rollout.temperature": POSITIVE, "rollout.top_p": within(0, 1, low_open=True),
    "rollout.top_k": at_least(0, integer=True), "rollout.step_timeout_s": POSITIVE, "rollout.env_workers": COUNT,
    "rollout.batch_wait_s": NON_NEGATIVE, "rollout.backend": one_of(BACKENDS),
    "rollout.max_observation_chars": at_least(64, integer=True),  # room for the marker saying what was cut
    "rollout.vllm.gpu_memory_utilization": within(0, 1, low_open=True), "rollout.vllm.kv_cache_gib": POSITIVE,
    "rollout.vllm.max_model_len": COUNT, "rollout.vllm.sync_check_tokens": at_least(0, integer=True),
    "rollout.vllm.switch_interval_s": POSITIVE, "rollout.vllm.admit": one_of(ADMIT),
    "rollout.vllm.timeout_s": POSITIVE, "rollout.vllm.retries": at_least(0, integer=True),
    "grpo.learning_rate": POSITIVE, "grpo.per_device_train_batch_size": COUNT,
    "grpo.gradient_accumulation_steps": COUNT, "grpo.max_steps": COUNT, "grpo.loss_type": one_of(LOSS_TYPES),
    "grpo.beta": NON_NEGATIVE, "grpo.epsilon": POSITIVE, "grpo.epsilon_high": NON_NEGATIVE,
    "grpo.scale_rewards": one_of(SCALE_REWARDS), "grpo.logging_steps": COUNT, "grpo.save_steps": COUNT,
    "grpo.save_total_limit": at_least(0, integer=True), "grpo.warmup_steps": at_least(0, integer=True),
    "grpo.lr_scheduler_type": one_of(LR_SCHEDULERS), "grpo.max_grad_norm": NON_NEGATIVE,
    "grpo.nonfinite_rewards": one_of(NONFINITE_REWARDS), "grpo.micro_batches": one_of(MICRO_BATCHES),
    "grpo.seed": SEED, "sft.seed": SEED,
    "sft.num_episodes": COUNT, "sft.explore": SHARE, "sft.learning_rate": POSITIVE, "sft.num_train_epochs": POSITIVE,
    "sft.max_steps": Rule(lambda v: v == -1 or (_finite(v) and v >= 1), "must be -1 (num_train_epochs decides) or "
                                                                         "an integer >= 1"),
    "sft.per_device_train_batch_size": COUNT, "sft.gradient_accumulation_steps": COUNT, "sft.max_length": COUNT,
    "sft.logging_steps": COUNT, "sft.save_steps": COUNT,
    "eval.episodes": COUNT, "eval.seed_start": at_least(0, integer=True), "eval.temperature": NON_NEGATIVE,
    "eval.k": COUNT, "eval.batch_size": COUNT, "eval.during_training": at_least(0, integer=True),
    "eval.transcripts": at_least(0, integer=True),
    "log.sample_episodes": at_least(0, integer=True), "log.token_episodes": at_least(0, integer=True),
    "log.wandb": one_of(WANDB_MODES),
}


def _value(cfg: RunConfig, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def check_values(cfg: RunConfig) -> None:
    """Each key of `RULES`, and every reward weight: one ConfigError naming the first bad value."""
    for key, rule in RULES.items():
        value = _value(cfg, key)
        if value is None or rule.accepts(value):
            continue
        if rule.says.startswith("accepted:"):
            raise ConfigError(f"unknown {key} {value!r} ({rule.says})")
        raise ConfigError(f"{key}={value!r}: {rule.says}")
    for name, weight in cfg.rewards.items():
        if not _finite(weight):
            raise ConfigError(f"rewards.{name}={weight!r}: must be a finite number (0 logs a reward without "
                              "training on it)")


def check_config(cfg: RunConfig) -> None:
    """Every check of a loaded config: TRL passthrough keys, keys that must fit together, then `RULES`."""
    g = cfg.grpo
    own = {f.name: f for f in dataclasses.fields(g)}
    g.trl_args = {k: grpo_config_value(k, v, own) for k, v in g.trl_args.items()}  # a config file's too
    _check_grpo(cfg)
    _check_rollout_and_eval(cfg)
    check_values(cfg)
    if cfg.model.autocast != "none" and cfg.model.dtype not in ("auto", "float32"):
        raise ConfigError(f"model.autocast={cfg.model.autocast!r} keeps float32 weights: model.dtype "
                          f"{cfg.model.dtype!r} is not accepted with it (accepted: float32, or auto, which is "
                          "float32 then)")
    if 0 < cfg.log.sample_episodes < cfg.log.token_episodes:  # 0 sample episodes: nothing logged, tokens neither
        raise ConfigError(f"log.token_episodes={cfg.log.token_episodes}: must be at most log.sample_episodes "
                          f"({cfg.log.sample_episodes}); only episodes written to episodes.jsonl carry tokens")
    if not cfg.rewards:
        raise ConfigError("no rewards configured (e.g. rewards: {solved: 1.0})")


def _check_grpo(cfg: RunConfig) -> None:
    g = cfg.grpo
    if g.num_iterations < 1:
        raise ConfigError(f"grpo.num_iterations must be >= 1 (optimizer steps per generated batch), "
                          f"got {g.num_iterations}")
    if not isinstance(cfg.model.tf32, bool):
        raise ConfigError(f"model.tf32 must be true or false, got {cfg.model.tf32!r}")
    if not (_finite(g.step_advantage_weight) and g.step_advantage_weight >= 0):
        raise ConfigError(f"grpo.step_advantage_weight must be a finite number >= 0 (0 = episode advantages only), "
                          f"got {g.step_advantage_weight}")
    if not (_finite(g.time_limit_s) and g.time_limit_s >= 0):
        raise ConfigError(f"grpo.time_limit_s must be >= 0 seconds (0 = no limit), got {g.time_limit_s}")
    if g.num_generations < 2:
        raise ConfigError(f"grpo.num_generations must be >= 2 for group-relative advantages, got {g.num_generations}")
    if g.micro_batches == "by_length" and (why := grouping_changes_gradient(g)):
        raise ConfigError(f"grpo.micro_batches=by_length: {why}, so grouping episodes by length would change the "
                          "gradient (accepted here: auto or shuffled)")
    total = g.per_device_train_batch_size * g.gradient_accumulation_steps
    if total % g.num_generations:
        raise ConfigError(
            f"grpo.per_device_train_batch_size * gradient_accumulation_steps ({total}) must be a multiple of "
            f"grpo.num_generations ({g.num_generations})")


def grouping_changes_gradient(g) -> str | None:
    """Why the step's gradient depends on which episodes share a micro-batch (None: it does not), as far as the
    config says (`rl.trl_hooks.LengthGroupedMicroBatchesMixin.group_micro_batches` adds what the trainer knows).

    The loss of most of TRL's loss types is a sum over micro-batches of terms that each depend on their own row
    alone (a per-episode mean, or a token sum over a normaliser of the whole batch), so grouping the rows
    differently sums the same terms. bnpo divides by each micro-batch's own token count, and the entropy bonus
    and entropy mask are per micro-batch too."""
    args = g.trl_args
    if g.loss_type == "bnpo":
        return "grpo.loss_type=bnpo normalises each micro-batch by its own token count"
    if args.get("entropy_coef", 0.0) or args.get("use_adaptive_entropy", False):
        return "the entropy bonus (grpo.entropy_coef / use_adaptive_entropy) is a mean over each micro-batch"
    if args.get("top_entropy_quantile", 1.0) < 1.0:
        return "grpo.top_entropy_quantile < 1 picks its tokens within each micro-batch"
    return None


def _check_rollout_and_eval(cfg: RunConfig) -> None:
    if len(cfg.env.train_seeds) != 2 or cfg.env.train_seeds[0] >= cfg.env.train_seeds[1]:
        raise ConfigError(f"env.train_seeds must be [start, stop) with start < stop, got {cfg.env.train_seeds}")
    if cfg.env.train_seeds[1] > cfg.eval.seed_start:
        raise ConfigError(f"env.train_seeds {cfg.env.train_seeds} reach into the held-out eval seeds "
                          f"(eval.seed_start={cfg.eval.seed_start}); keep training seeds below it")
    if cfg.eval.every_steps < 0 or (cfg.eval.every_steps and cfg.eval.during_training < 1):
        raise ConfigError(f"eval.every_steps={cfg.eval.every_steps} must be >= 0 (0 = off), and with it "
                          f"eval.during_training={cfg.eval.during_training} held-out episodes must be >= 1")
    if cfg.eval.k > 1 and cfg.eval.temperature <= 0:
        raise ConfigError(f"eval.k={cfg.eval.k} samples per seed need eval.temperature > 0 (greedy repeats itself)")
    r = cfg.rollout
    if r.backend == "vllm-server" and not r.vllm.urls:
        raise ConfigError("rollout.backend=vllm-server needs rollout.vllm.urls, e.g. "
                          "--set 'rollout.vllm.urls=[http://127.0.0.1:8001]' (start one with launch/serve_vllm.py)")
    if r.vllm.dtype not in VLLM_DTYPES:
        raise ConfigError(f"rollout.vllm.dtype={r.vllm.dtype!r} is not accepted (accepted: {', '.join(VLLM_DTYPES)})")
    problem = engine_args_problem(r.vllm.engine_args)
    if problem:
        raise ConfigError(f"rollout.vllm.engine_args {problem}")
    if r.vllm.engine_process and "worker_extension_cls" in r.vllm.engine_args:
        raise ConfigError("rollout.vllm.engine_args sets worker_extension_cls, which an engine in its own process "
                          "(rollout.vllm.engine_process=true) needs for the trainer's weights (rl/vllm_worker.py)")


def engine_args_problem(args: dict) -> str | None:
    """What is wrong with extra `vllm.LLM` arguments (`rollout.vllm.engine_args`), if anything."""
    named = [k for k in args if not isinstance(k, str) or not k.isidentifier()]
    if named:
        return (f"has keys {named!r} that are no argument names "
                "(accepted: vllm.LLM arguments, e.g. {max_num_seqs: 128})")
    taken = sorted(set(args) & set(VLLM_ENGINE_ARGS_SET_BY))
    if taken:
        return (f"sets {', '.join(taken)}, which toolgym sets itself: use "
                + "; ".join(f"{k}: {VLLM_ENGINE_ARGS_SET_BY[k]}" for k in taken))
    if args.get("speculative_config") is not None:
        return ("sets speculative_config, which is not accepted: sampled with n-gram speculation, vLLM 0.32's CPU "
                "engine gave NaN or wrong logprobs and a skewed sampler (vLLM issue 55005), and a GPU's engine is not "
                "checked yet; a rollout needs both right (rl/bench/baselines/README.md, 'n-gram speculation'; "
                "python -m rl.bench.speculation_probe checks an engine)")
    return None


# vllm.LLM (and VLLMBackend) arguments that toolgym sets from its own settings: name -> where to set it instead
VLLM_ENGINE_ARGS_SET_BY = {
    "model": "--model / model.name", "tokenizer": "--model / model.name", "dtype": "rollout.vllm.dtype",
    "seed": "grpo.seed (eval.seed_start in eval)", "gpu_memory_utilization": "rollout.vllm.gpu_memory_utilization",
    "kv_cache_memory_bytes": "rollout.vllm.kv_cache_gib", "kv_cache_gib": "rollout.vllm.kv_cache_gib",
    "model_path": "--model / model.name", "tokenizer_path": "--model / model.name",
    "max_model_len": "rollout.vllm.max_model_len",
    "enable_sleep_mode": "rollout.vllm.enable_sleep_mode", "weights_version": "nothing (the trainer's step)",
    "logprobs_mode": "nothing (the loss needs processed_logprobs)",
    "engine_process": "rollout.vllm.engine_process",
}


# GRPOConfig fields that toolgym sets from its own sections: name -> where to set it instead
SET_BY_TOOLGYM = {
    "output_dir": "output_dir", "run_name": "name", "max_completion_length": "rollout.max_completion_tokens",
    "temperature": "rollout.temperature", "top_p": "rollout.top_p", "top_k": "rollout.top_k",
    "reward_weights": "rewards (a weight per reward)", "report_to": "log.wandb", "fp16": "model.dtype",
    "bf16": "model.dtype or model.autocast", "use_cpu": "nothing (a GPU is used when there is one)",
    "chat_template_kwargs": "rollout.chat_template_kwargs", "use_vllm": "rollout.backend",
    "vllm_mode": "rollout.backend", "disable_tqdm": "nothing (the progress bar shows episode metrics)",
}


# GRPOConfig's class chain in the installed sources: (package, file, class), child first
_GRPO_CONFIG_CHAIN = (("trl", "trainer/grpo_config.py", "GRPOConfig"), ("trl", "trainer/base_config.py", "_BaseConfig"),
                      ("transformers", "training_args.py", "TrainingArguments"))


@functools.cache
def grpo_config_fields() -> dict[str, str]:
    """TRL's GRPOConfig init fields, name -> annotation text, read from the installed sources: importing
    TRL (torch, transformers) costs 10-50 s, too long to learn that a key is misspelt. Falls back to
    importing it where the sources are not laid out as expected; tests/unit/test_trl_contract.py checks
    the two agree on the installed TRL."""
    fields: dict[str, str] = {}
    seen: set[str] = set()  # a child's declaration (even init=False) hides its parents'
    try:
        for package, file, name in _GRPO_CONFIG_CHAIN:
            spec = importlib.util.find_spec(package)  # a top-level package: found, not imported
            tree = ast.parse((Path(spec.origin).parent / file).read_text())
            cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
            for node in cls.body:
                if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                    continue
                annotation = ast.unparse(node.annotation).strip("'\"")
                if node.target.id in seen or annotation.startswith(("ClassVar", "typing.ClassVar")):
                    continue
                seen.add(node.target.id)
                if not _init_false(node.value):
                    fields[node.target.id] = annotation
    except (AttributeError, OSError, StopIteration, SyntaxError, TypeError):
        from trl import GRPOConfig

        return {f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
                for f in dataclasses.fields(GRPOConfig) if f.init}
    return fields


def _init_false(value: ast.expr | None) -> bool:
    return (isinstance(value, ast.Call) and any(k.arg == "init" and isinstance(k.value, ast.Constant)
                                                and k.value.value is False for k in value.keywords))


def grpo_config_value(key: str, value: Any, own: dict) -> Any:
    """A `grpo.*` key toolgym has no field for: a field of TRL's GRPOConfig, passed through."""
    if key in SET_BY_TOOLGYM:  # before importing TRL: this answer needs none of it
        raise ConfigError(f"grpo.{key} is set by toolgym: use {SET_BY_TOOLGYM[key]}")
    trl_fields = grpo_config_fields()
    if key not in trl_fields:
        names = [n for n in dict.fromkeys([*own, *trl_fields]) if n not in SET_BY_TOOLGYM and n != "trl_args"]
        close = difflib.get_close_matches(key, names, n=3, cutoff=0.4)
        hint = f"; did you mean {' or '.join(repr('grpo.' + c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown config key 'grpo.{key}': neither a toolgym grpo key nor a field of TRL's "
                          f"GRPOConfig{hint}")
    expected = {"float": float, "int": int, "bool": bool, "str": str}.get(trl_fields[key])
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is not None and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
        raise ConfigError(f"config key 'grpo.{key}' (TRL's GRPOConfig.{key}) expects {expected.__name__}, "
                          f"got {value!r}")
    if expected is float and not math.isfinite(value):
        raise ConfigError(f"grpo.{key}={value!r}: must be a finite number")
    return value


def check_names(cfg: RunConfig) -> None:
    """What the config names exists: the model, the tool-call format, the chat template. No model loads."""
    from rl.chat import template_path
    from rl.toolcalls import FORMATS

    check_model_name(cfg.model.name)
    if cfg.model.tool_format not in FORMATS:
        raise ConfigError(f"unknown model.tool_format {cfg.model.tool_format!r} (accepted: "
                          f"{', '.join(sorted(FORMATS))}; or one registered with rl.toolcalls.register_format)")
    if cfg.model.chat_template:
        try:
            template_path(cfg.model.chat_template)
        except ValueError as e:
            raise ConfigError(f"model.chat_template: {e}") from e


def check_model_name(name: str) -> None:
    """A built-in model, a model folder (a model, a LoRA adapter or a toolgym run), or a hub id."""
    path = Path(name).expanduser()
    if name in BUILT_IN_MODELS:
        return
    if not name.strip():
        raise ConfigError(f"model.name is empty (built in: {', '.join(BUILT_IN_MODELS)}; or a model folder, or a "
                          "hub id 'owner/name')")
    if path.is_dir():
        if not any((path / f).exists() for f in ("config.json", "adapter_config.json", "final")):
            raise ConfigError(f"model {name!r} is a folder without config.json, adapter_config.json or final/ "
                              "(accepted: a model, a LoRA adapter or a toolgym run folder)")
        return
    if path.exists():
        raise ConfigError(f"model {name!r} is a file; give its folder")
    first = name.split("/")[0]
    looks_like_a_path = name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1
    if looks_like_a_path or (first != name and Path(first).is_dir()):
        raise ConfigError(f"model {name!r}: no such folder")
    if HUB_ID.fullmatch(name) or _in_hub_cache(name):
        return  # a hub id: downloaded, or found in the hub's cache, when it loads
    raise ConfigError(f"unknown model {name!r} (built in: {', '.join(BUILT_IN_MODELS)}; or a model folder, or a "
                      "hub id 'owner/name')")


def _in_hub_cache(name: str) -> bool:
    """A hub id without an owner (`gpt2`) counts when the hub's local cache holds it."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(name, "config.json"), str)
