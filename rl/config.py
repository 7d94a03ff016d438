"""Typed run configuration: dataclasses, loaded from YAML, overridden with dotted keys.

    cfg = load_config("configs/sudoku.yaml", overrides=["grpo.learning_rate=1e-5"])

Unknown or misspelt keys are errors that name the key and what is accepted; so are bad
values (`rl/config_checks.py`) and YAML that does not parse (with its file and line). Imports
no torch, so `--dry-run` and config errors are instant.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Not language-model modules, left out of LoRA: vision towers and projectors (Gemma 4 calls its
# projector embed_vision), and Gemma 4's audio encoder alike.
VISION_MODULES = ["vision_tower", "vision_model", "multi_modal_projector", "visual", "image_newline", "mm_projector",
                  "embed_vision", "audio_tower", "embed_audio"]


@dataclass
class VLLMSection:
    """vLLM engine (`rollout.backend: vllm`, on the trainer's device) or servers (`vllm-server`)."""

    gpu_memory_utilization: float = 0.3  # share of GPU memory (of RAM on CPU) for weights + KV cache
    kv_cache_gib: float | None = None  # KV cache size; None = vLLM's sizing from gpu_memory_utilization
    max_model_len: int = 4096  # prompt + completion tokens per sequence
    enable_sleep_mode: bool = False  # free the engine's GPU memory during the optimizer step (CUDA only)
    # The engine's weights: auto = the trainer's dtype (float32 weights get TF32 with model.tf32), or bfloat16 /
    # float16 / float32; another dtype samples from a policy unlike the one the loss scores (sync_check_tokens).
    dtype: str = "auto"
    # After every weight push, score this many tokens of the last batch's first episode under the engine and the
    # trainer and log the largest and mean logprob difference (rollout/sync_logprob_diff_max, _mean): proof that the
    # engine samples from the trained weights; beside it the gap before the push (_stale_max, _stale_mean). 0 = off.
    sync_check_tokens: int = 256
    switch_interval_s: float | None = None  # the GIL's switch interval during a rollout; null: as it is
    # When a rollout's turns join the engine's batch: each at the next step, or together, once every live episode
    # asked (with none generating, a slow env holds them rollout.batch_wait_s at most): rl/vllm_stream.py
    admit: str = "each"
    engine_process: bool = False  # the engine core in its own process, off the trainer's GIL: rl/vllm_worker.py
    # More `vllm.LLM` arguments, e.g. {compilation_config: {cudagraph_mode: FULL}} or {enforce_eager: true}; the
    # keys the fields above set are refused (VLLM_ENGINE_ARGS_SET_BY), as is speculative_config (rl/config_checks.py)
    engine_args: dict[str, Any] = field(default_factory=dict)
    urls: list[str] = field(default_factory=list)  # vllm-server: servers started with launch/serve_vllm.py
    timeout_s: float = 300.0  # vllm-server: per request
    retries: int = 2  # vllm-server: per request, moving on to the next URL


@dataclass
class RolloutSection:
    max_turns: int = 8  # model turns per episode (the cap on tool iterations)
    max_new_tokens: int = 64  # per model turn
    max_completion_tokens: int = 1024  # model + tool tokens after the prompt
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    step_timeout_s: float = 30.0  # per env step, including reset
    max_observation_chars: int = 8000  # longer observations are cut, with a marker (episode fact obs_truncated)
    env_workers: int = 16  # env threads shared by the batch's episodes
    # Batch-only backends (transformers) and rollout.vllm.admit=together: a batch starts when every live episode
    # waits for the model, or this long after one waits with nothing generating, so a slow env delays nobody more.
    batch_wait_s: float = 0.5
    system_prompt: str = ""
    # Text that opens every model turn, e.g. '<tool_call>\n{"name": "' to nudge a base model into calling tools. Its
    # tokens are context (env_mask 0); parsing sees prefix + reply.
    response_prefix: str = ""
    # End a model turn right after its first tool call (a stop string such as </tool_call>). Base models otherwise
    # ramble past the call; it also means one call per turn.
    stop_after_tool_call: bool = False
    chat_template_kwargs: dict[str, Any] = field(default_factory=lambda: {"enable_thinking": False})
    # Generation during training: hf (transformers generate), vllm (an engine on the trainer's device, weights pushed
    # after every optimizer step: rollout.vllm), vllm-server (launch/serve_vllm.py).
    backend: str = "hf"
    vllm: VLLMSection = field(default_factory=VLLMSection)


@dataclass
class ModelSection:
    name: str = "gemma-3-270m"  # built-in name, hub id or local path
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16
    # float32 weights on an NVIDIA GPU: matmuls in TF32 (fp32 range and accumulation, 10-bit inputs).
    # launch/bench.py --suite precision measures its speed and logprob drift against full fp32 and bf16.
    tf32: bool = True
    autocast: str = "none"  # bfloat16: mixed precision, float32 weights, matmuls in bf16 (training, hf generation)
    attn_implementation: str = "sdpa"  # transformers' names, sdpa_bf16 or sdpa_cudnn (bf16 on cuDNN): rl/attention.py
    chat_template: str = ""  # built-in name, trl:<name> or path; empty = the tokenizer's own
    tool_format: str = "hermes"


@dataclass
class LoraSection:
    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    exclude_modules: list[str] = field(default_factory=lambda: list(VISION_MODULES))
    modules_to_save: list[str] = field(default_factory=list)  # e.g. embed_tokens for new special tokens
    ensure_weight_tying: bool = True  # a trained embed_tokens stays tied to lm_head in tied models


@dataclass
class EnvSection:
    name: str = "sudoku"
    kwargs: dict[str, Any] = field(default_factory=dict)
    train_seeds: list[int] = field(default_factory=lambda: [0, 100_000])  # [start, stop)
    # run model-written code even where the sandbox can only be weak (no namespaces): see envs/README.md
    sandbox_allow_weak: bool = False


@dataclass
class GRPOSection:
    learning_rate: float = 1e-5
    num_generations: int = 4
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_steps: int = 100
    loss_type: str = "dapo"
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float = 0.0  # 0 = same as epsilon
    scale_rewards: str = "group"
    mask_truncated_completions: bool = False
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    save_steps: int = 50
    save_total_limit: int = 3
    seed: int = 0
    warmup_steps: int = 0
    # linear decays to 0 at max_steps; constant keeps the rate (a run ended by time_limit_s, or continued in legs)
    lr_scheduler_type: str = "linear"
    max_grad_norm: float = 1.0
    # Optimizer steps per generated batch (GRPO's mu): >1 reuses each batch's episodes, with the clipped importance
    # ratio against the logprobs they were sampled with: the cheap way to learn more per episode played.
    num_iterations: int = 1
    # Stop at the end of the first optimizer step after this many seconds of training (0 = no limit), saving a
    # checkpoint, final/ and curve.png as if max_steps had been reached: a run that must fit a job's allowance ends
    # cleanly instead of being killed mid-step. Counted per process start: a resumed run gets it all again.
    time_limit_s: float = 0.0
    # Step-level credit in multi-turn episodes (rl/credit.py, after GiGPO): a turn's tokens get the
    # episode advantage plus this weight times the turn's advantage among the group's episodes that
    # acted in the same env state (envs say so with `state_key()`). 0 = episode advantages only.
    step_advantage_weight: float = 0.0
    # Project only the model's own tokens through the LM head in the loss passes (rl/logprobs.py): the same
    # numbers where the loss reads them, without scoring tool results. false = TRL's scoring of every token.
    score_only_model_tokens: bool = True
    # Which episodes share a micro-batch: by_length (similar lengths together, so each pass pads to less), shuffled
    # (TRL's random split), auto (by_length wherever the summed gradient is the same: rl/README.md).
    micro_batches: str = "auto"
    # A reward function's NaN or inf: error (stop, naming the reward and the episode) or drop (leave the
    # value out, as a None, and count it in rewards/<name>/nonfinite).
    nonfinite_rewards: str = "error"
    # Any other field of TRL's GRPOConfig, passed through as given (`--set grpo.weight_decay=0.1` lands
    # here); checked against GRPOConfig's fields when the config loads.
    trl_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class SFTSection:
    demos: str = ""  # a saved demonstrations dataset; empty = generate num_episodes with the env's expert
    num_episodes: int = 200
    explore: float = 0.1  # share of expert turns that look at the board instead of moving
    expert: dict[str, Any] = field(default_factory=dict)  # the env's expert's options, e.g. Sudoku {order: constrained}
    learning_rate: float = 2e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_length: int = 2048
    logging_steps: int = 5
    save_steps: int = 500
    seed: int = 0
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory for long demonstrations


@dataclass
class EvalSection:
    episodes: int = 200
    seed_start: int = 10_000_000  # held out: no training seed range may reach it
    temperature: float = 0.0  # 0 = greedy
    k: int = 1  # samples per seed; >1 reports pass@k (needs temperature > 0)
    batch_size: int = 16  # episodes played together
    # keyword arguments of a reference policy (`eval.py --policy`), e.g. {order: reading} for Sudoku's random player
    policy_kwargs: dict = field(default_factory=dict)
    # episodes eval.py writes turn by turn beside its result (<env>-<label>.episodes.jsonl, for launch/view.py),
    # the first played; 0 = none. The cap bounds the file: 400 ten-turn 4x4 Sudoku episodes take about 2 MB
    transcripts: int = 1000
    # During GRPO: greedy episodes on the first `during_training` held-out seeds before the first
    # step and every `every_steps` steps, logged as heldout/* (0 = off)
    every_steps: int = 0
    during_training: int = 64


@dataclass
class LogSection:
    wandb: str = "auto"  # auto (online if logged in, else offline), online, offline, off
    project: str = "toolgym"
    group: str = ""  # wandb run group (e.g. a sweep's name); empty = none
    tags: list[str] = field(default_factory=list)  # wandb run tags
    sample_episodes: int = 1  # episodes per step written to episodes.jsonl
    # of those, how many also log each completion token with its env_mask, loss mask and advantage (the viewer's
    # token view); about one short string per token, so kept few
    token_episodes: int = 1


@dataclass
class RunConfig:
    name: str = ""  # default: <env>-<timestamp>
    output_dir: str = "runs"
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    env: EnvSection = field(default_factory=EnvSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    rewards: dict[str, float] = field(default_factory=lambda: {"solved": 1.0})
    sft: SFTSection = field(default_factory=SFTSection)
    eval: EvalSection = field(default_factory=EvalSection)
    log: LogSection = field(default_factory=LogSection)


class ConfigError(ValueError):
    pass


class _Loader(yaml.SafeLoader):
    """YAML with 1.2 booleans: only true/false are booleans, so `wandb: off` stays a string."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def parse_yaml(text: str) -> Any:
    """YAML as toolgym reads it (configs, `--set` values, sweep files): `off`/`on` stay strings."""
    return yaml.load(text, Loader=_Loader)


def _check_value(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
            try:
                return _check_value(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key {key!r}: {value!r} does not match {hint}")
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _looks_numeric(value):  # YAML 1.1 reads 1e-5 as a string
        return float(value)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r} expects a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_check_value(v, item, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} expects a mapping, got {value!r}")
        _, item = typing.get_args(hint)
        return {k: _check_value(v, item, f"{key}.{k}") for k, v in value.items()}
    if isinstance(hint, type) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise ConfigError(f"config key {key!r} expects {hint.__name__}, got {value!r}")
    return value


def _apply(obj: Any, data: dict, prefix: str = "", merge_dicts: bool = False) -> None:
    """Merge a nested mapping into a dataclass instance, strictly.

    A mapping-valued key (env.kwargs, rewards) is replaced by a config file, but merged
    into by a dotted override, so `--set env.kwargs.size=9` keeps the other kwargs.
    """
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for key, value in data.items():
        full = f"{prefix}{key}"
        if not isinstance(key, str):
            raise ConfigError(f"config key {full!r} is not a name "
                              f"(YAML read it as {type(key).__name__} {key!r}; quote it)")
        if key not in fields and isinstance(obj, GRPOSection):
            obj.trl_args[key] = value  # checked against TRL's GRPOConfig in validate()
            continue
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {prefix + close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {full!r} (known: {', '.join(prefix + f for f in fields)}){hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {full!r} is a section; give a mapping, got {value!r}")
            _apply(current, value, f"{full}.", merge_dicts)
        else:
            value = _check_value(value, hints[key], full)
            if merge_dicts and isinstance(current, dict) and isinstance(value, dict):
                value = _deep_merge(current, value)
            setattr(obj, key, value)


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _deep_merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def _nest(dotted: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """"grpo.learning_rate=1e-5" -> ("grpo.learning_rate", 1e-05); values are parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"bad override {text!r} (expected key.path=value, e.g. grpo.learning_rate=1e-5)")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"bad override {text!r}: not YAML ({_yaml_problem(e)}); quote a string that holds "
                          "brackets, braces or a colon") from e
    return key.strip(), value


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def read_yaml(path: Path) -> Any:
    """A YAML file's contents; every way of failing is one ConfigError naming the file (and line)."""
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} not found")
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a folder; give a YAML file")
    try:
        return parse_yaml(path.read_text())
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read ({e.strerror})") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"config file {str(path)!r}{where}: {_yaml_problem(e)}") from e


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error's message in one line, without the quoted source lines PyYAML adds."""
    problem = ": ".join(x for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
    if "'\\t'" in problem:
        problem += " (a tab; indent YAML with spaces)"
    return " ".join(problem.split())


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    cfg = RunConfig()
    if path is not None:
        data = read_yaml(Path(path)) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
        _apply(cfg, data)
    for item in overrides:
        key, value = parse_override(item)
        _apply(cfg, _nest(key, value), merge_dicts=True)
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Values, not only keys and types: ranges, finiteness, known names, keys that must fit together."""
    from rl.config_checks import check_config  # it imports this module's classes
    check_config(cfg)


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
