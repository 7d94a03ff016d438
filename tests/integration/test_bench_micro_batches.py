"""The micro_batches suite: one batch's loss passes in TRL's shuffled split and grouped by length."""

import pytest


def test_grouping_by_length_pads_less_and_sums_the_same_gradient():
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


def test_attention_reruns_the_grouped_split_with_bfloat16_attention_in_the_same_turns():
    from rl.bench import load_suites

    suite = load_suites()["micro_batches"]
    rows = suite({"model": "tiny", "episodes": 4, "micro_batch": 2, "attention": "sdpa_bf16"})
    assert [(r["split"], r["attention"]) for r in rows] == [("shuffled", "sdpa"), ("by_length", "sdpa"),
                                                            ("by_length, sdpa_bf16", "sdpa_bf16")]
    assert all(len(r["passes_s"]) == 2 for r in rows)  # the second pass in reverse: float32 after bfloat16
    plain, half = rows[1], rows[2]
    assert plain["gradient_max_diff"] < 1e-5 < half["gradient_max_diff"] < 5e-2  # rounded attention, same update
    assert half["attention_speedup"] == pytest.approx(plain["loss_passes_s"] / half["loss_passes_s"])
    assert "attention_speedup" not in plain
    with pytest.raises(ValueError, match=r"attention='sdpa_bf61': unknown attention implementation \(accepted: "
                                         r"sdpa, sdpa_bf16, sdpa_cudnn, eager, "):
        suite({"model": "tiny", "attention": "sdpa_bf61"})


def test_autocast_reruns_the_grouped_split_in_bfloat16_mixed_precision():
    from rl.bench import load_suites

    suite = load_suites()["micro_batches"]
    rows = suite({"model": "tiny", "episodes": 4, "micro_batch": 2, "autocast": "bfloat16"})
    assert [(r["split"], r["attention"], r["autocast"]) for r in rows] == [
        ("shuffled", "sdpa", "none"), ("by_length", "sdpa", "none"),
        ("by_length, autocast bfloat16", "sdpa", "bfloat16")]
    plain, mixed = rows[1], rows[2]
    assert plain["gradient_max_diff"] < 1e-5 < mixed["gradient_max_diff"] < 0.1  # bf16 products, same update
    assert mixed["autocast_speedup"] == pytest.approx(plain["loss_passes_s"] / mixed["loss_passes_s"])
    assert "autocast_speedup" not in plain and "attention_speedup" not in mixed
    with pytest.raises(ValueError, match=r"autocast='float16': accepted: none, bfloat16"):
        suite({"model": "tiny", "autocast": "float16"})


def test_with_an_attention_too_each_runs_under_the_autocast_and_the_last_is_profiled(monkeypatch):
    """Also: the profile names the operators a loss pass spends its time in."""
    from rl.bench import load_suites, scoring

    profiled, top = [], scoring._top_operators

    def recording(run, n):
        profiled.append((run.args, run.keywords))
        return top(run, n)

    monkeypatch.setattr(scoring, "_top_operators", recording)
    rows = load_suites()["micro_batches"]({"model": "tiny", "episodes": 4, "micro_batch": 2, "repeats": 1,
                                           "attention": "sdpa_cudnn", "autocast": "bfloat16", "profile": 6})
    assert [(r["split"], r.get("attention"), r.get("autocast")) for r in rows] == [
        ("shuffled", "sdpa", "none"), ("by_length", "sdpa", "none"), ("by_length, sdpa_cudnn", "sdpa_cudnn", "none"),
        ("by_length, autocast bfloat16", "sdpa", "bfloat16"),
        ("by_length, sdpa_cudnn, autocast bfloat16", "sdpa_cudnn", "bfloat16"),
        ("by_length, sdpa_cudnn, autocast bfloat16, profiled", None, None)]
    mixed, both = rows[3], rows[4]
    assert both["gradient_max_diff"] < 0.1
    # its attention against the config's under the same autocast; its autocast against none
    assert both["attention_speedup"] == pytest.approx(mixed["loss_passes_s"] / both["loss_passes_s"])
    assert both["autocast_speedup"] == pytest.approx(rows[1]["loss_passes_s"] / both["loss_passes_s"])
    assert profiled == [(("by_length", "sdpa_cudnn"), {"cast": "bfloat16"})]  # the last row's run
    top = rows[-1]["top_operators"]
    assert len(top) == 6
    assert all(op["calls"] > 0 and op["self_ms"] > 0 for op in top)
    assert [op["self_ms"] for op in top] == sorted((op["self_ms"] for op in top), reverse=True)
    assert 0 < sum(op["share"] for op in top) <= 1.0001
    # a loss pass of a transformer runs matrix products, forward and backward
    assert any(op["operator"] in ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear") for op in top), top
