"""The micro_batches suite: one batch's loss passes in TRL's shuffled split and grouped by length."""


def test_grouping_by_length_pads_less_and_sums_the_same_gradient():
    import pytest

    from rl.bench import load_suites

    suite = load_suites()["micro_batches"]
    rows = suite({"model": "tiny", "episodes": 8, "micro_batch": 2})
    by_split = {r["split"]: r for r in rows}
    assert list(by_split) == ["shuffled", "by_length"]
    assert all(len(r["passes_s"]) == 2 for r in rows)  # twice each (repeats defaults to 2), in turns
    shuffled, grouped = by_split["shuffled"], by_split["by_length"]
    low, mean, high = shuffled["completion_tokens_min_mean_max"]
    assert low < mean < high  # the random player's episodes differ in length, or nothing could be saved
    assert grouped["padded_completion_positions"] < shuffled["padded_completion_positions"] <= high * 8
    assert grouped["gradient_max_diff"] < 1e-5  # the same gradient, but for the order of float sums
    assert grouped["speedup"] == pytest.approx(shuffled["loss_passes_s"] / grouped["loss_passes_s"])
    with pytest.raises(ValueError, match=r"episodes=6: must be a multiple of micro_batch \(4\)"):
        suite({"model": "tiny", "episodes": 6, "micro_batch": 4})
