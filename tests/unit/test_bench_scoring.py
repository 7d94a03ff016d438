"""The scoring suite: TRL's scoring of every completion token is the baseline of model-token-only scoring."""


def test_scoring_rows_project_fewer_positions_with_the_same_model_token_logprobs():
    import pytest

    from rl.bench import load_suites

    rows = load_suites()["scoring"]({"model": "tiny", "episodes": 2, "micro_batch": 1})
    ours, trl = rows
    assert (ours["mode"], trl["mode"]) == ("model_tokens", "trl")
    assert ours["mean_turns"] > 1 and ours["episodes"] == 2  # real multi-turn expert episodes
    assert 0 < ours["model_tokens"] < ours["completion_tokens"] < ours["sequence_tokens"]
    assert ours["lm_head_positions"] == ours["model_tokens"]
    # on a CPU, TRL projects every position of the padded batch: prompts and tool results too
    assert trl["lm_head_positions"] >= trl["sequence_tokens"] - trl["episodes"] > trl["completion_tokens"]
    assert trl["logprob_max_diff"] <= 1e-5 and ours["logprob_max_diff"] == 0  # against ours, on the model's tokens
    assert trl["speedup"] == 1 and ours["speedup"] == pytest.approx(trl["loss_passes_s"] / ours["loss_passes_s"])
