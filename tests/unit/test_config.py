import subprocess
import sys
from pathlib import Path

import pytest

from rl.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("grpo:\n  learning_rate: 1e-5\n  num_generations: 2\n"
                    "env:\n  kwargs: {size: 9}\nlog: {wandb: off}\n")
    cfg = load_config(path, ["grpo.learning_rate=3e-4", "rollout.max_turns=3", "env.kwargs.difficulty=hard"])
    assert cfg.grpo.learning_rate == 3e-4 and isinstance(cfg.grpo.learning_rate, float)
    assert cfg.grpo.num_generations == 2 and cfg.rollout.max_turns == 3
    assert cfg.env.kwargs == {"size": 9, "difficulty": "hard"}
    assert cfg.log.wandb == "off"


@pytest.mark.parametrize("override, message", [
    ("grpo.learnig_rate=1", "unknown config key 'grpo.learnig_rate'.*did you mean 'grpo.learning_rate'"),
    ("nope=1", "unknown config key 'nope'"),
    ("grpo.max_steps=ten", "config key 'grpo.max_steps' expects int, got 'ten'"),
    ("grpo=3", "config key 'grpo' is a section"),
    ("grpo.num_generations=1", "num_generations must be >= 2"),
    ("grpo.loss_type=ppo", "unknown grpo.loss_type 'ppo'"),
    ("log.wandb=maybe", "unknown log.wandb 'maybe'"),
    ("log.token_episodes=-1", r"log\.token_episodes=-1: must be an integer >= 0"),
    ("log.token_episodes=2", r"log\.token_episodes=2: must be at most log\.sample_episodes \(1\)"),
    ("eval.transcripts=-1", r"eval\.transcripts=-1: must be an integer >= 0"),
    ("novalue", "bad override 'novalue'"),
    ("grpo.micro_batches=sorted", r"unknown grpo.micro_batches 'sorted' \(accepted: auto, by_length, shuffled\)"),
    ("rollout.vllm.admit=rounds", r"unknown rollout.vllm.admit 'rounds' \(accepted: each, together\)"),
    ("model.attn_implementation=sdpa_bf61",
     (r"unknown model.attn_implementation 'sdpa_bf61' \(accepted: sdpa, sdpa_bf16, sdpa_cudnn, eager, "
      r".*hub kernel 'org/repo'\)")),
    ("model.attn_implementation=sdpa_bf16", None),
    ("model.autocast=float16", r"unknown model.autocast 'float16' \(accepted: none, bfloat16\)"),
    ("model.autocast=bfloat16;model.dtype=bfloat16",
     r"keeps float32 weights: model.dtype 'bfloat16' is not accepted with it \(accepted: float32, or auto"),
    ("model.autocast=bfloat16;model.dtype=float16", r"model.dtype 'float16' is not accepted with it"),
    ("model.autocast=bfloat16", None),  # auto: float32 weights then
    ("model.autocast=bfloat16;model.dtype=float32", None),
    ("grpo.bf16=true", "grpo.bf16 is set by toolgym: use model.dtype or model.autocast"),
    ("model.attn_implementation=kernels-community/flash-attn", None),
    ("grpo.micro_batches=by_length", None),  # accepted with the default loss (dapo)
    ("grpo.micro_batches=by_length;grpo.loss_type=bnpo",
     "grpo.micro_batches=by_length: grpo.loss_type=bnpo normalises each micro-batch by its own token count"),
    ("grpo.micro_batches=by_length;grpo.top_entropy_quantile=0.2", "top_entropy_quantile < 1 picks its tokens"),
    ("grpo.micro_batches=by_length;grpo.entropy_coef=0.01", "the entropy bonus .* is a mean over each micro-batch"),
    # any other field of TRL's GRPOConfig passes through, checked against GRPOConfig
    ("grpo.nonsense=1", ("unknown config key 'grpo.nonsense': neither a toolgym grpo key nor a field of TRL's "
                         "GRPOConfig; did you mean 'grpo.seed'")),
    ("grpo.weight_decy=0.1", "did you mean 'grpo.weight_decay'"),
    ("grpo.weight_decay=heavy", r"'grpo.weight_decay' \(TRL's GRPOConfig.weight_decay\) expects float, got 'heavy'"),
    ("grpo.weight_decay=.nan", r"grpo.weight_decay=nan: must be a finite number"),
    ("grpo.temperature=0.5", "grpo.temperature is set by toolgym: use rollout.temperature"),
    ("grpo.report_to=[wandb]", "grpo.report_to is set by toolgym: use log.wandb"),
    ("rollout.vllm.engine_args={max_model_len: 8192, enforce_eager: true}",
     ("rollout.vllm.engine_args sets max_model_len, which toolgym sets itself: "
      "use max_model_len: rollout.vllm.max_model_len")),
    ("rollout.vllm.engine_args={kv_cache_gib: 2}",
     "sets kv_cache_gib, which toolgym sets itself: use kv_cache_gib: rollout.vllm"),
    ("rollout.vllm.engine_args={1: 2}", r"rollout.vllm.engine_args has keys \[1\] that are no argument names"),
    ("rollout.vllm.engine_process=true;rollout.vllm.engine_args={worker_extension_cls: my.Ext}",
     r"sets worker_extension_cls, which an engine in its own process \(rollout.vllm.engine_process=true\) needs"),
    ("rollout.vllm.engine_args={worker_extension_cls: my.Ext}", None),  # an in-process engine may have one
    ("rollout.vllm.engine_args={engine_process: true}", "use engine_process: rollout.vllm.engine_process"),
    ("rollout.vllm.engine_args={speculative_config: {method: ngram, num_speculative_tokens: 4}}",
     "sets speculative_config, which is not accepted: sampled with n-gram speculation"),
])
def test_bad_config_is_named(override, message):
    if message is None:
        load_config(None, override.split(";"))
        return
    with pytest.raises(ConfigError, match=message):
        load_config(None, override.split(";"))


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rollout:\n  max_turn: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'rollout.max_turn'"):
        load_config(path)


def test_shipped_config_loads():
    cfg = load_config(ROOT / "configs" / "sudoku.yaml")
    assert cfg.env.name == "sudoku" and cfg.model.name == "gemma-3-270m"
    assert cfg.rollout.chat_template_kwargs == {"enable_thinking": False}


def run_launch(*args):
    return subprocess.run([sys.executable, str(ROOT / "launch" / "grpo.py"), *args], check=False,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_dry_run_prints_resolved_config():
    result = run_launch("--env", "sudoku", "--dry-run", "--set", "grpo.learning_rate=2e-6", "--reward", "solved=3")
    assert result.returncode == 0, result.stderr
    assert "learning_rate: 2.0e-06" in result.stdout and "solved: 3.0" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--env", "sudokku"], "unknown env 'sudokku' (known: "),
    (["--env", "sudoku", "--set", "grpo.lr=1"], "unknown config key 'grpo.lr'"),
    (["--env", "sudoku", "--reward", "no_such_pkg.rewards:shaped=0.5"], "bad reward path 'no_such_pkg.rewards:shaped'"),
    (["--env", "sudoku", "--reward", "solved=heavy"], "bad reward weight 'heavy'"),
    (["--env", "sudoku", "--set", "env.kwargs.max_turns=9"],
     ("rejects env.kwargs {'size': 4, 'difficulty': 'easy', 'max_invalid': 6, 'max_turns': 9}: "
      "max_turns=9 is now max_steps")),
])
def test_launch_errors_exit_before_any_model_loads(args, message):
    result = run_launch(*args)
    assert result.returncode == 2 and message in result.stderr
    assert "Loading weights" not in result.stderr



def test_grpo_config_fields_pass_through_typed_and_survive_a_saved_config(tmp_path):
    from rl.config import to_yaml

    cfg = load_config(None, ["grpo.weight_decay=1", "grpo.optim=adamw_torch", "grpo.log_completions=true"])
    assert cfg.grpo.trl_args == {"weight_decay": 1.0, "optim": "adamw_torch", "log_completions": True}
    assert isinstance(cfg.grpo.trl_args["weight_decay"], float)
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))  # as a run writes it; --resume reads it back
    assert load_config(saved).grpo.trl_args == cfg.grpo.trl_args
    saved.write_text("grpo:\n  trl_args: {nonsense: 1}\n")  # a file's passthrough is checked too
    with pytest.raises(ConfigError, match="unknown config key 'grpo.nonsense'"):
        load_config(saved)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_passes_the_value_checks(path):
    load_config(path)


def test_no_sample_episodes_turns_episode_logging_off_whatever_token_episodes_says():
    cfg = load_config(None, ["log.sample_episodes=0"])
    assert cfg.log.sample_episodes == 0 and cfg.log.token_episodes == 1


def test_engine_args_pass_through_as_given():
    cfg = load_config(None, [
        "rollout.vllm.engine_args={compilation_config: {cudagraph_mode: FULL}, enforce_eager: false}"])
    assert cfg.rollout.vllm.engine_args == {"compilation_config": {"cudagraph_mode": "FULL"}, "enforce_eager": False}
