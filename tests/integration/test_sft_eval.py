"""SFT on demonstrations, GRPO from the SFT checkpoint, and deterministic evaluation (tiny model)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rl.config import load_config
from rl.evaluation import evaluate

ROOT = Path(__file__).resolve().parents[2]


def launch(script, *args, cwd):
    result = subprocess.run([sys.executable, str(ROOT / "launch" / script), *args], check=False,
                            capture_output=True, text=True, timeout=600, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_sft_then_grpo_from_the_checkpoint_then_eval(tmp_path):
    common = ["--env", "sudoku", "--set", f"output_dir={tmp_path}", "--set", "log.wandb=off"]
    launch("sft.py", *common, "--model", "tiny", "--name", "sft", "--num-episodes", "8", cwd=tmp_path)
    sft = tmp_path / "sft"
    assert (sft / "final" / "model.safetensors").exists() and (sft / "demos" / "dataset_info.json").exists()
    losses = [json.loads(line) for line in (sft / "metrics.jsonl").open()]
    assert any("loss" in entry or "train_loss" in entry for entry in losses)
    assert_adapter_is_the_merged_model(sft)
    stamps = {p: p.stat().st_mtime_ns for p in (sft / "final").iterdir()}
    again = launch("sft.py", *common, "--model", "tiny", "--name", "sft", "--num-episodes", "8", "--resume",
                   cwd=tmp_path)
    assert "already finished" in again.stdout and "SFT finished" not in again.stdout
    assert stamps == {p: p.stat().st_mtime_ns for p in (sft / "final").iterdir()}  # final/ untouched

    launch("grpo.py", *common, "--model", str(sft), "--name", "grpo", "--set", "grpo.max_steps=1",
           "--set", "rollout.response_prefix=", "--set", "grpo.per_device_train_batch_size=4",
           "--set", "grpo.gradient_accumulation_steps=1", cwd=tmp_path)
    assert (tmp_path / "grpo" / "final" / "adapter_config.json").exists()

    out = launch("eval.py", *common, "--model", str(tmp_path / "grpo"), "--episodes", "4",
                 "--out", str(tmp_path / "eval"), cwd=tmp_path)
    assert "| grpo | sudoku | 4 |" in out.stdout.replace(str(tmp_path) + "/", "")
    result = json.loads((tmp_path / "eval" / "sudoku-grpo.json").read_text())
    assert result["episodes"] == 4 and result["seeds"] == [10_000_000, 10_000_004]
    played = [json.loads(line) for line in (tmp_path / "eval" / result["episodes_file"]).open()]
    assert [(r["seed"], r["sample"], r["info"]["solved"]) for r in played] == [
        (e["seed"], e["sample"], e["solved"]) for e in result["per_episode"]]  # every episode, turn by turn
    assert all(len(r["turns"]) == r["info"]["model_turns"] for r in played)


def assert_adapter_is_the_merged_model(sft: Path) -> None:
    """`runs/<sft>/adapter` (a few MB, portable) loads as the same model as `runs/<sft>` (merged)."""
    import torch

    from rl.config import ModelSection
    from rl.models import load_model

    adapter = sft / "adapter"
    assert (adapter / "adapter_config.json").exists()
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"
    merged, tokenizer = load_model(ModelSection(name=str(sft), dtype="float32"))
    again, _ = load_model(ModelSection(name=str(adapter), dtype="float32"))
    base, _ = load_model(ModelSection(name="tiny", dtype="float32"))
    ids = torch.tensor([tokenizer("place a digit on the board").input_ids])
    with torch.no_grad():
        want, got, before = (m(ids).logits for m in (merged, again, base))
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(before, want, atol=1e-3)  # SFT changed the model, so the check has teeth

    # A LoRA trained on top of the loaded adapter (GRPO from it) names the adapter as its base,
    # so loading it brings back SFT's change too, not just the built-in base's.
    from peft import get_peft_model

    from rl.config import LoraSection
    from rl.models import lora_config

    on_top = get_peft_model(again, lora_config(LoraSection(enabled=True), again))
    for name, param in on_top.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    with torch.no_grad():
        stacked = on_top(ids).logits
    on_top.save_pretrained(str(sft / "on-top"))
    tokenizer.save_pretrained(str(sft / "on-top"))
    assert json.loads((sft / "on-top" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(adapter)
    chain, _ = load_model(ModelSection(name=str(sft / "on-top"), dtype="float32"))
    with torch.no_grad():
        assert torch.allclose(chain(ids).logits, stacked, atol=1e-5)


def test_greedy_eval_is_deterministic():
    cfg = load_config(None, ["model.name=tiny", "eval.episodes=6", "eval.batch_size=3", "rollout.max_turns=3",
                             "rollout.max_new_tokens=8", "eval.transcripts=4"])
    rows, again = [], []
    first, second = evaluate(cfg, transcripts=rows), evaluate(cfg, transcripts=again)
    assert first.pop("wall_s") > 0 and second.pop("wall_s") > 0  # the time is the one thing that may differ
    assert first == second and first["episodes"] == 6
    assert rows == again and [r["seed"] for r in rows] == list(range(10_000_000, 10_000_004))  # the cap: 4 of 6
    assert [r["info"]["model_turns"] for r in rows] == [len(r["turns"]) for r in rows] == [
        e["turns"] for e in first["per_episode"][:4]]
    cfg.rollout.max_turns = 8  # the default 4x4 puzzle has 4 holes
    expert = evaluate(cfg, policy="expert")
    assert expert["solve_rate"] == 1.0 and expert["label"] == "expert"
    cfg.eval.policy_kwargs = {"order": "constrained"}  # the random player's options, named in its label
    constrained = evaluate(cfg, policy="random")
    assert constrained["label"] == "random-order-constrained" and constrained["solve_rate"] == 1.0
    cfg.eval.policy_kwargs = {"depth": 2}
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'depth' for SudokuRandom"):
        evaluate(cfg, policy="random")


def test_recipe_script_runs_every_stage_and_writes_one_table(tmp_path):
    out = tmp_path / "recipe"
    result = subprocess.run(
        ["bash", str(ROOT / "launch" / "recipe_sudoku.sh"), str(out), "4", "1", "1", "3",
         "--set", "rollout.max_turns=4", "--set", "grpo.per_device_train_batch_size=4",
         "--set", "grpo.gradient_accumulation_steps=1", "--set", "grpo.num_generations=4"],
        capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "MODEL": "tiny", "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
    labels = [row.split(" | ")[0].removeprefix("| ") for row in rows[1:]]
    assert labels == ["random", "base", "SFT", "SFT+GRPO", "expert"]
    assert "Paired: SFT+GRPO vs SFT on the same 3 episodes:" in (out / "results.md").read_text()
    assert all(" | sudoku | 3 | " in row for row in rows[1:])
    expert = json.loads((out / "eval" / "sudoku-expert.json").read_text())
    assert expert["solve_rate"] == 0.0 and expert["env_kwargs"]["difficulty"] == "hard"  # 4 turns < 10 holes
    assert (out / "grpo" / "final" / "adapter_config.json").exists() and (out / "sft" / "demos").is_dir()


def test_sft_projects_only_the_demonstrations_model_tokens_through_the_lm_head(tmp_path, lm_head_rows):
    from datasets import load_from_disk

    from rl.sft import train_sft

    cfg = load_config(None, [f"output_dir={tmp_path}", "name=sft", "model.name=tiny", "env.name=sudoku",
                             "sft.num_episodes=4", "sft.num_train_epochs=1", "sft.per_device_train_batch_size=4",
                             "sft.gradient_accumulation_steps=1", "log.wandb=off"])
    out = train_sft(cfg)
    demos = load_from_disk(str(out / "demos"))
    model_tokens = sum(sum(mask) for mask in demos["completion_mask"])
    tokens = sum(len(ids) for ids in demos["input_ids"])
    assert lm_head_rows == [model_tokens] and model_tokens < tokens / 2  # one step over the 4 demonstrations


def test_sft_takes_gradient_checkpointing_from_its_own_section(tmp_path):
    """`sft.gradient_checkpointing` reaches SFT's trainer; GRPO's setting (`grpo.gradient_checkpointing`) does not."""
    import torch

    from rl.sft import train_sft

    common = [f"output_dir={tmp_path}", "model.name=tiny", "env.name=sudoku", "sft.num_episodes=2", "sft.max_steps=1",
              "sft.save_steps=1", "sft.per_device_train_batch_size=2", "log.wandb=off"]
    for name, sets in [("on", ["sft.gradient_checkpointing=true"]), ("off", ["grpo.gradient_checkpointing=true"])]:
        out = train_sft(load_config(None, [*common, f"name={name}", *sets]))
        args = torch.load(out / "checkpoint-1" / "training_args.bin", weights_only=False)
        assert args.gradient_checkpointing is (name == "on"), name
