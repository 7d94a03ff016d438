"""GRPO options, in-process on the tiny model: held-out eval during training (rl/heldout.py, the same seeds
and numbers as launch/eval.py) and num_iterations."""

import argparse
import json

import pytest
import yaml

from rl.cli import add_run_arguments, config_from_args

SPREAD_REWARDS = """
import random

def draw(prompts, completions, **kwargs):
    return [random.random() for _ in completions]

def coin(prompts, completions, **kwargs):
    return [float(random.random() < 0.5) for _ in completions]
"""
PREFIX = '<tool_call>\n{"name": "place", "arguments": {"row": '  # the tiny model's calls then fail to parse


def config(tmp_path, *extra):
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return config_from_args(parser.parse_args([
        "--env", "sudoku", "--model", "tiny", "--name", "held", "--set", f"output_dir={tmp_path}",
        "--set", "log.wandb=off", "--set", "rollout.max_turns=3", "--set", "rollout.max_new_tokens=12",
        "--set", f"rollout.response_prefix={json.dumps(PREFIX)}", "--set", "grpo.per_device_train_batch_size=4",
        "--set", "grpo.gradient_accumulation_steps=1", "--set", "grpo.save_steps=100", *extra]))


def test_grpo_logs_held_out_rows_at_the_start_and_every_n_steps_equal_to_eval(tmp_path, monkeypatch):
    import rl.heldout
    from rl.evaluation import evaluate, paired_comparison
    from rl.trainer import train

    played = []

    def recording(envs, seeds, backend, chat, settings, **kwargs):
        played.append((list(seeds), settings.temperature))
        return run_episodes(envs, seeds, backend, chat, settings, **kwargs)

    run_episodes = rl.heldout.run_episodes
    monkeypatch.setattr(rl.heldout, "run_episodes", recording)

    cfg = config(tmp_path, "--set", "grpo.max_steps=2", "--set", "eval.every_steps=2",
                 "--set", "eval.during_training=3", "--set", "grpo.learning_rate=0.05")
    start = evaluate(config(tmp_path, "--set", "eval.episodes=3", "--set", "eval.batch_size=3"))
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "held" / "metrics.jsonl").open()]
    held = {r["step"]: r for r in rows if "heldout/solve_rate" in r}
    assert sorted(held) == [0, 2]  # the starting model, then every 2nd step (not step 1)
    assert held[2]["reward"] is not None  # logged with the step's own metrics
    assert held[0]["heldout/episodes"] == 3
    # step 0 is the untrained model on eval.py's first 3 held-out seeds, greedy: the same numbers
    assert held[0]["heldout/solve_rate"] == start["solve_rate"]
    assert held[0]["heldout/mean_return"] == start["mean_return"]
    assert held[0]["heldout/invalid_call_rate"] == start["invalid_call_rate"]
    assert held[0]["heldout/format_error_rate"] == start["format_error_rate"] > 0
    assert played == [([10_000_000, 10_000_001, 10_000_002], 0.0)] * 2  # eval.py's first seeds, greedy
    # each measurement is an eval.py result too: step 0 plays every episode as eval.py did
    written = {int(p.stem.split("-")[1]): json.loads(p.read_text())
               for p in (tmp_path / "held" / "heldout").glob("*.json")}
    assert sorted(written) == [0, 2] and written[0]["label"] == "held@step-0"
    assert written[0]["per_episode"] == start["per_episode"]
    assert written[2]["solve_rate"] == held[2]["heldout/solve_rate"]
    assert paired_comparison(start, written[2])["episodes"] == 3
    assert (tmp_path / "held" / "curve.png").exists()


def test_bad_held_out_settings_are_named(tmp_path):
    import pytest

    from rl.config import ConfigError

    with pytest.raises(ConfigError, match="eval.every_steps=-1 must be >= 0"):
        config(tmp_path, "--set", "eval.every_steps=-1")
    with pytest.raises(ConfigError, match="eval.during_training=0 held-out episodes must be >= 1"):
        config(tmp_path, "--set", "eval.every_steps=2", "--set", "eval.during_training=0")
    with pytest.raises(ConfigError,
                       match=r"grpo.num_iterations must be >= 1 \(optimizer steps per generated batch\), got 0"):
        config(tmp_path, "--set", "grpo.num_iterations=0")


def test_num_iterations_reuses_each_generated_batch_for_that_many_optimizer_steps(tmp_path, monkeypatch):
    from rl.trainer import EpisodeRollouts, train

    calls = []
    original = EpisodeRollouts.__call__

    def counting(self, prompts, trainer):
        calls.append(trainer.state.global_step)
        return original(self, prompts, trainer)

    monkeypatch.setattr(EpisodeRollouts, "__call__", counting)
    train(config(tmp_path, "--set", "grpo.max_steps=4", "--set", "grpo.num_iterations=2"))
    assert calls == [0, 2]  # one batch of episodes per 2 optimizer steps
    steps = [json.loads(line) for line in (tmp_path / "held" / "metrics.jsonl").open() if '"loss"' in line]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    assert all("clip_ratio/region_mean" in s for s in steps)  # the reused steps are clipped against old logprobs
    assert [("env/solved" in s) for s in steps] == [True, False, True, False]  # episode metrics when played


def test_time_limit_ends_the_run_at_a_step_boundary_with_checkpoint_final_and_curve(tmp_path, capsys):
    from rl.resume import latest_checkpoint
    from rl.trainer import train

    # every step takes longer than 1 ms, so the run stops after its first of 5 steps, as if max_steps were 1
    out = train(config(tmp_path, "--set", "grpo.max_steps=5", "--set", "grpo.time_limit_s=0.001"))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").open() if '"loss"' in line]
    assert steps == [1]
    assert latest_checkpoint(out).name == "checkpoint-1"  # saved although save_steps is 100
    assert (out / "final" / "adapter_model.safetensors").exists() or (out / "final" / "model.safetensors").exists()
    assert (out / "curve.png").exists()
    assert "grpo.time_limit_s=0.001 reached at step 1" in capsys.readouterr().out


def test_a_constant_schedule_keeps_the_learning_rate_where_linear_decays_it(tmp_path):
    from rl.trainer import train

    rates = {}
    for schedule in ("linear", "constant"):
        out = train(config(tmp_path / schedule, "--set", "grpo.max_steps=2", "--set", "grpo.learning_rate=1e-4",
                           "--set", f"grpo.lr_scheduler_type={schedule}"))
        rates[schedule] = [json.loads(line)["learning_rate"] for line in (out / "metrics.jsonl").open()
                           if '"learning_rate"' in line]
    assert rates["constant"] == [1e-4, 1e-4]
    assert rates["linear"][0] == 1e-4 and rates["linear"][1] < 1e-4


def test_held_out_eval_also_measures_the_last_step(tmp_path):
    from rl.trainer import train

    out = train(config(tmp_path, "--set", "grpo.max_steps=3", "--set", "eval.every_steps=2",
                       "--set", "eval.during_training=2"))
    held = [json.loads(line)["step"] for line in (out / "metrics.jsonl").open() if "heldout/solve_rate" in line]
    assert held == [0, 2, 3]  # the start, every 2nd step, and the final model


def test_a_field_of_trls_grpo_config_reaches_the_optimizer(tmp_path):
    from rl.trainer import build_trainer

    trainer = build_trainer(config(tmp_path, "--set", "grpo.weight_decay=0.1", "--set", "grpo.adam_beta2=0.95"))
    assert trainer.args.weight_decay == 0.1
    optimizer = trainer.create_optimizer()
    trained = [g for g in optimizer.param_groups if g["params"]]
    assert 0.1 in {g["weight_decay"] for g in trained} and {g["betas"][1] for g in trained} == {0.95}


def test_the_wandb_run_holds_the_whole_toolgym_config(tmp_path, monkeypatch):
    from rl.trainer import train

    for name in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_DIR", "WANDB_RUN_GROUP", "WANDB_TAGS"):
        monkeypatch.setenv(name, "")  # restored after the test; the run sets them
        monkeypatch.delenv(name)
    cfg = config(tmp_path, "--set", "grpo.max_steps=1", "--set", "log.wandb=offline", "--set", "log.group=sweep-a",
                 "--set", "log.tags=[tiny, test]")
    train(cfg)
    [log] = list((tmp_path / "held" / "wandb").glob("offline-run-*/run-*.wandb"))
    records = wandb_records(log)
    # a config update reaches the file as a config record, or folded into a run record's config
    configs = [r.config if r.WhichOneof("record_type") == "config" else r.run.config for r in records
               if r.WhichOneof("record_type") in ("config", "run")]
    found = [json.loads(item.value_json) for c in configs for item in c.update if item.key == "toolgym"]
    assert found, f"no toolgym config in the {len(records)} records of {log}"
    logged = found[-1]
    assert logged["env"]["name"] == "sudoku" and logged["rollout"]["max_turns"] == 3
    assert logged["rewards"] == cfg.rewards and logged["log"]["tags"] == ["tiny", "test"]
    assert {r.run.run_group for r in records if r.WhichOneof("record_type") == "run"} == {"sweep-a"}


def test_episode_rewards_are_trls_logged_reward_under_either_aggregation(tmp_path):
    """TRL logs the weighted sum of the reward functions as `reward` whichever `multi_objective_aggregation` made
    the advantages; the episode log and the step-level advantages read that sum too."""
    from rl.trainer import train

    (tmp_path / "spread.py").write_text(SPREAD_REWARDS)  # two rewards that differ, so the aggregations do
    for aggregation in ("sum_then_normalize", "normalize_then_sum"):
        out = train(config(tmp_path / aggregation, "--reward", f"{tmp_path / 'spread.py'}:draw=1",
                           "--reward", f"{tmp_path / 'spread.py'}:coin=0.5",
                           "--set", "grpo.max_steps=1", "--set", "log.sample_episodes=4",
                           "--set", "grpo.step_advantage_weight=1",
                           "--set", f"grpo.multi_objective_aggregation={aggregation}"))
        assert yaml.safe_load((out / "config.yaml").read_text())["grpo"]["trl_args"] == {
            "multi_objective_aggregation": aggregation}
        logged = [json.loads(line)["reward"] for line in (out / "episodes.jsonl").open()]
        step = next(json.loads(line) for line in (out / "metrics.jsonl").open() if '"reward"' in line)
        assert len(set(logged)) > 1  # rewards that differ, so a wrong sum would show
        assert len(logged) == 4 and step["reward"] == pytest.approx(sum(logged) / 4, abs=1e-6)


def test_held_out_rows_give_each_kind_of_move_its_share(tmp_path):
    """Sudoku counts its moves by kind; every turn here places a 1 at row 1, column 1, a clue in seed 10,000,000's
    and the next seeds' puzzles, so every held-out move is a refused clue move."""
    from rl.trainer import train

    call = '<tool_call>\n{"name": "place", "arguments": {"row": 1, "col": 1, "digit": 1}}\n</tool_call>'
    out = train(config(tmp_path, "--set", "grpo.max_steps=1", "--set", "eval.every_steps=1",
                       "--set", "eval.during_training=2", "--set", f"rollout.response_prefix={json.dumps(call)}",
                       "--set", "rollout.max_new_tokens=2"))
    held = [json.loads(line) for line in (out / "metrics.jsonl").open() if "heldout/solve_rate" in line]
    assert [row["heldout/moves/clue"] for row in held] == [1.0, 1.0]
    assert held[0]["heldout/moves/right"] == held[0]["heldout/moves/clash"] == 0.0
    written = json.loads((out / "heldout" / "step-1.json").read_text())
    assert {f"heldout/moves/{k}": v for k, v in written["move_shares"].items()}.items() <= held[1].items()


def wandb_records(path) -> list:
    """The records of an offline wandb run's `run-*.wandb` file, wandb's protobuf `Record`s. The file is a LevelDB
    log: a 7-byte header (`:W&B`, magic, version), then 32 KiB blocks of chunks, each with a 7-byte header (CRC,
    length, type: 1 whole, 2 first, 3 middle, 4 last), and a record split across blocks where it does not fit:
    reading the bytes as one stream finds a record only when it happens not to straddle a block."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, at, block, records, parts = path.read_bytes(), 7, 32768, [], []
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    while at + 7 <= len(data):
        if block - at % block < 7:  # a block's tail too short for a chunk header is padding
            at += block - at % block
            continue
        _, length, kind = struct.unpack("<IHB", data[at:at + 7])
        if kind == 0:  # zeros: the rest of the block is padding (or the file ends)
            at += block - at % block
            continue
        parts.append(data[at + 7:at + 7 + length])
        at += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            records.append(record)
            parts = []
    return records

