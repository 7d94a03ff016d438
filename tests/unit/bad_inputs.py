"""Bad command lines of the launch scripts, each with the one-line error it must get.

`CASES`: (id, script, arguments, pattern the error line must match). Every case runs in a folder
holding `FILES` (broken configs and reward modules); `argv` adds `--env sudoku` (unless the case
names an env) and `--dry-run`. `python -m tests.unit.bad_inputs FOLDER` runs every case in one
process, in FOLDER, and prints one JSON line per case: its exit code, its stderr and which heavy
modules (torch, transformers, ...) were imported by then.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "trl", "peft", "vllm")  # what a bad command line must never wait for

FILES = {
    "broken.yaml": "model: {name: tiny\nlora: {r: 8}\n",
    "tab.yaml": "grpo:\n\tlearning_rate: 1.0e-5\n",
    "list.yaml": "- grpo\n- env\n",
    "typo.yaml": "rollout:\n  max_turn: 3\n",
    "nan.yaml": "grpo:\n  learning_rate: .nan\n",
    "norewards.yaml": "rewards: {}\n",
    "intkey.yaml": "grpo: {1: 2}\n",
    "binary.yaml": b"\xff\xfe\x00grpo",
    "folder/keep.txt": "",
    "notamodel/readme.txt": "",
    "syntax_rewards.py": "def fn(prompts, completions, **kwargs)\n    return [0.0 for _ in completions]\n",
    "raising_rewards.py": "import os\n\nraise RuntimeError('needs a GPU')\n",
    "wrongsig_rewards.py": "def fn(completion):\n    return [0.0]\n",
    "positional_rewards.py": "def fn(prompts, completions, /, **kwargs):\n    return [0.0 for _ in completions]\n",
    "syntax_env.py": "class Env(\n",
}

G, S, E = "grpo", "sft", "eval"
LINE = r"', line 2, column"  # a YAML error names the file and the line


def _set(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


CASES = [
    # config files
    ("yaml_malformed", G, ["--config", "broken.yaml"], r"broken\.yaml" + LINE + r" 5: .*expected ',' or '}'"),
    ("yaml_tab", G, ["--config", "tab.yaml"], r"tab\.yaml" + LINE + r" 1: .*'\\t'.*a tab; indent YAML with spaces"),
    ("config_folder", G, ["--config", "folder"], r"config file 'folder' is a folder"),
    ("config_missing", G, ["--config", "nosuch.yaml"], r"config file 'nosuch\.yaml' not found"),
    ("config_not_mapping", G, ["--config", "list.yaml"], r"must hold a mapping at the top level"),
    ("config_unknown_key", G, ["--config", "typo.yaml"], r"unknown config key 'rollout\.max_turn'"),
    ("config_nan", G, ["--config", "nan.yaml"], r"grpo\.learning_rate=nan: must be a finite number > 0"),
    ("config_not_text", G, ["--config", "binary.yaml"], r"binary\.yaml' is not UTF-8 text"),
    ("rewards_none", G, ["--config", "norewards.yaml"], r"no rewards configured"),
    ("config_number_key", G, ["--config", "intkey.yaml"], r"config key 'grpo\.1' is not a name \(YAML read it as int"),
    # reward modules and specs
    ("reward_syntax_module", G, ["--reward", "syntax_rewards:fn"], r"syntax_rewards\.py, line 1: SyntaxError"),
    ("reward_syntax_file", G, ["--reward", "syntax_rewards.py:fn"], r"syntax_rewards\.py, line 1: SyntaxError"),
    ("reward_raises_module", G, ["--reward", "raising_rewards:fn"], r"raising_rewards\.py, line 3: RuntimeError: n"),
    ("reward_raises_file", G, ["--reward", "raising_rewards.py:fn"], r"raising_rewards\.py, line 3: RuntimeError"),
    ("reward_wrong_signature", G, ["--reward", "wrongsig_rewards.py:fn"], r"signature \(completion\).*\*\*kwargs"),
    ("reward_positional_only", G, ["--reward", "positional_rewards.py:fn"], r"completions positional-only"),
    ("reward_unknown", G, ["--reward", "nosuch"], r"unknown reward 'nosuch'"),
    ("reward_weight_text", G, ["--reward", "solved=high"], r"bad reward weight 'high'"),
    ("reward_weight_nan", G, ["--reward", "solved=nan"], r"bad reward weight 'nan'.*expected a finite number"),
    ("reward_weight_inf_set", G, _set("rewards.solved=.inf"), r"rewards\.solved=inf: must be a finite number"),
    ("reward_weight_nan_set", G, _set("rewards.solved=.nan"), r"rewards\.solved=nan: must be a finite number"),
    ("reward_module_missing", G, ["--reward", "nosuch_module:fn"], r"cannot import module 'nosuch_module'"),
    ("reward_no_module", G, ["--reward", ":fn"], r"bad reward path ':fn': no module before the ':'"),
    ("reward_function_missing", G, ["--reward", "rewards.episode:nosuch"], r"has no function 'nosuch'"),
    # --set syntax, keys and types
    ("set_unclosed_list", G, _set("grpo.learning_rate=[1e-5"), r"bad override 'grpo\.learning_rate=\[1e-5': not YAML"),
    ("set_no_equals", G, _set("grpo.learning_rate"), r"bad override 'grpo\.learning_rate'"),
    ("set_empty_key", G, _set("=3"), r"bad override '=3'"),
    ("key_unknown", G, _set("rollout.max_turn=3"), r"unknown config key 'rollout\.max_turn'"),
    ("section_misspelled", G, _set("rollot.max_turns=3"), r"unknown config key 'rollot'.*did you mean 'rollout'"),
    ("section_scalar", G, _set("rollout=3"), r"config key 'rollout' is a section"),
    ("wrong_type", G, _set("grpo.num_generations=four"), r"'grpo\.num_generations' expects int, got 'four'"),
    ("grpo_key_of_toolgym", G, _set("grpo.temperature=0.5"), r"grpo\.temperature is set by toolgym"),
    # numbers: ranges and finiteness
    ("lr_nan", G, _set("grpo.learning_rate=nan"), r"grpo\.learning_rate=nan: must be a finite number > 0"),
    ("lr_negative", G, _set("grpo.learning_rate=-1e-5"), r"grpo\.learning_rate=-1e-05: must be a finite number > 0"),
    ("lr_inf", G, _set("grpo.learning_rate=.inf"), r"grpo\.learning_rate=inf: must be a finite number > 0"),
    ("temperature_negative", G, _set("rollout.temperature=-1"), r"rollout\.temperature=-1\.0: must be a finite num"),
    ("max_steps_zero", G, _set("grpo.max_steps=0"), r"grpo\.max_steps=0: must be an integer >= 1"),
    ("max_steps_negative", G, _set("grpo.max_steps=-5"), r"grpo\.max_steps=-5: must be an integer >= 1"),
    ("max_turns_zero", G, _set("rollout.max_turns=0"), r"rollout\.max_turns=0: must be an integer >= 1"),
    ("max_new_tokens_negative", G, _set("rollout.max_new_tokens=-1"), r"max_new_tokens=-1: must be an integer >= 1"),
    ("completion_tokens_zero", G, _set("rollout.max_completion_tokens=0"), r"max_completion_tokens=0: must be an"),
    ("top_p_above_one", G, _set("rollout.top_p=1.5"), r"rollout\.top_p=1\.5: must be a number in \(0, 1\]"),
    ("step_timeout_zero", G, _set("rollout.step_timeout_s=0"), r"step_timeout_s=0\.0: must be a finite number > 0"),
    ("batch_negative", G, _set("grpo.per_device_train_batch_size=-4"), r"batch_size=-4: must be an integer >= 1"),
    ("grad_accum_zero", G, _set("grpo.gradient_accumulation_steps=0"), r"accumulation_steps=0: must be an integer"),
    ("batch_not_multiple", G, _set("grpo.num_generations=3"), r"must be a multiple of grpo\.num_generations \(3\)"),
    ("num_generations_one", G, _set("grpo.num_generations=1"), r"num_generations must be >= 2"),
    ("beta_negative", G, _set("grpo.beta=-0.1"), r"grpo\.beta=-0\.1: must be a finite number >= 0"),
    ("grad_norm_nan", G, _set("grpo.max_grad_norm=.nan"), r"grpo\.max_grad_norm=nan: must be a finite number >= 0"),
    ("lora_r_zero", G, _set("lora.r=0"), r"lora\.r=0: must be an integer >= 1"),
    ("lora_dropout_one", G, _set("lora.dropout=1"), r"lora\.dropout=1\.0: must be a number in \[0, 1\)"),
    ("train_seeds_empty", G, _set("env.train_seeds=[5,5]"), r"env\.train_seeds must be \[start, stop\)"),
    ("train_seeds_into_eval", G, _set("env.train_seeds=[0,20000000]"), r"reach into the held-out eval seeds"),
    ("gpu_memory_share", G, _set("rollout.vllm.gpu_memory_utilization=2"), r"utilization=2\.0: must be a number in"),
    ("seed_negative", G, _set("grpo.seed=-1"), r"grpo\.seed=-1: must be an integer in \[0, 2\*\*32\)"),
    ("eval_k_greedy", G, _set("eval.k=4"), r"eval\.k=4 samples per seed need eval\.temperature > 0"),
    # names: formats, dtypes, schedules, backends, templates, models, envs, runs
    ("tool_format_unknown", G, _set("model.tool_format=nosuch"), r"model\.tool_format 'nosuch' \(accepted: gemma4, h"),
    ("dtype_unknown", G, _set("model.dtype=int7"), r"unknown model\.dtype 'int7' \(accepted: auto, float32"),
    ("loss_type_unknown", G, _set("grpo.loss_type=ppo"), r"unknown grpo\.loss_type 'ppo'"),
    ("scale_rewards_unknown", G, _set("grpo.scale_rewards=all"), r"unknown grpo\.scale_rewards 'all'"),
    ("lr_scheduler_unknown", G, _set("grpo.lr_scheduler_type=step"), r"unknown grpo\.lr_scheduler_type 'step'"),
    ("nonfinite_rewards_unknown", G, _set("grpo.nonfinite_rewards=ignore"), r"nonfinite_rewards 'ignore' \(acc"),
    ("wandb_unknown", G, _set("log.wandb=maybe"), r"unknown log\.wandb 'maybe'"),
    ("token_episodes_above_sampled", G, _set("log.token_episodes=3"), r"token_episodes=3: must be at most log\.sa"),
    ("backend_unknown", G, _set("rollout.backend=sglang"), r"unknown rollout\.backend 'sglang'"),
    ("vllm_server_without_urls", G, _set("rollout.backend=vllm-server"), r"needs rollout\.vllm\.urls"),
    ("chat_template_unknown", G, _set("model.chat_template=nosuch"), r"unknown chat template 'nosuch'"),
    ("model_unknown", G, ["--model", "nosuch-model"], r"unknown model 'nosuch-model' \(built in: gemma-3-270m, tiny"),
    ("model_empty", G, _set("model.name="), r"model\.name is empty \(built in: gemma-3-270m"),
    ("model_path_missing", G, ["--model", "./runs/nosuch"], r"model './runs/nosuch': no such folder"),
    ("model_folder_not_a_model", G, ["--model", "notamodel"], r"'notamodel' is a folder without config\.json"),
    ("env_unknown", G, ["--env", "sudokku"], r"unknown env 'sudokku'"),
    ("env_file_syntax", G, ["--env", "syntax_env.py:Env"], r"syntax_env\.py, line 1: SyntaxError"),
    ("env_kwargs_rejected", G, _set("env.kwargs.size=5"), r"rejects env\.kwargs.*unsupported sudoku size 5"),
    ("env_kwargs_renamed", G, _set("env.kwargs.max_turns=3"), r"max_turns=3 is now max_steps"),
    ("resume_never_existed", G, ["--name", "never-was", "--resume"], r"--resume: no run 'never-was' under runs/"),
    # the other launch scripts share the path
    ("sft_lr_negative", S, _set("sft.learning_rate=-1"), r"sft\.learning_rate=-1\.0: must be a finite number > 0"),
    ("sft_episodes_zero", S, _set("sft.num_episodes=0"), r"sft\.num_episodes=0: must be an integer >= 1"),
    ("sft_yaml_tab", S, ["--config", "tab.yaml"], r"tab\.yaml" + LINE + " 1"),
    ("eval_episodes_zero", E, _set("eval.episodes=0"), r"eval\.episodes=0: must be an integer >= 1"),
    ("eval_batch_zero", E, _set("eval.batch_size=0"), r"eval\.batch_size=0: must be an integer >= 1"),
    ("eval_transcripts_negative", E, _set("eval.transcripts=-5"), r"eval\.transcripts=-5: must be an integer >= 0"),
    ("eval_model_unknown", E, ["--model", "nosuch-model"], r"unknown model 'nosuch-model'"),
]

def write_files(folder: Path) -> None:
    for name, content in FILES.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def argv(case) -> list[str]:
    """The command line of a case, after the script."""
    _, _, args, _ = case
    env = [] if "--env" in args else ["--env", "sudoku"]
    return [*env, *args, "--dry-run"]


def launch_main(script: str):
    """The `main` of launch/<script>.py, imported from its file."""
    spec = importlib.util.spec_from_file_location(f"launch_{script}", ROOT / "launch" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_case(case) -> dict:
    """One case in this process: its exit code, what it wrote to stderr, and the heavy modules loaded by then."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = launch_main(case[1])(argv(case))
        except SystemExit as e:
            code = e.code
    return {"id": case[0], "code": code, "stderr": stderr.getvalue(), "heavy": [m for m in HEAVY if m in sys.modules]}


if __name__ == "__main__":  # every case, in the folder given, as JSON lines; then a good command line
    os.chdir(sys.argv[1])
    for case in [*CASES, ("good", G, [], "")]:
        print(json.dumps(run_case(case)), flush=True)
