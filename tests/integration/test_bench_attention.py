"""`launch/bench.py --suite attention_kernels` (rl/bench/attention.py) on a CPU, at a small shape."""

import pytest

from rl.bench import load_suites

SMALL = {"batch": 2, "length": 64, "heads": 2, "head_dim": 16, "window": 16, "repeats": 2}


def test_each_kernel_is_timed_on_both_layer_kinds_against_the_first():
    rows = load_suites()["attention_kernels"]({**SMALL, "kernels": "math,flash_causal_no_mask"})
    assert [(r["layer"], r["kernel"]) for r in rows] == [
        ("sliding window", "math"), ("sliding window", "flash_causal_no_mask"),
        ("full attention", "math"), ("full attention", "flash_causal_no_mask")]
    assert all(r["ms"] > 0 and r["lengths"] == "fixed" for r in rows)
    by = {(r["layer"], r["kernel"]): r for r in rows}
    assert by[("sliding window", "math")]["max_diff_vs_first_kernel"] == 0
    assert by[("sliding window", "math")]["speedup_vs_first_kernel"] == 1
    # causal without the mask ignores the window: far off on the sliding layer, rounding on the full one
    assert by[("sliding window", "flash_causal_no_mask")]["max_diff_vs_first_kernel"] > 0.05
    assert by[("full attention", "flash_causal_no_mask")]["max_diff_vs_first_kernel"] < 0.05


def test_lengths_vary_and_bad_options_are_named():
    rows = load_suites()["attention_kernels"]({**SMALL, "length": 130, "kernels": "math", "lengths": "vary"})
    assert [r["lengths"] for r in rows] == ["vary", "vary"] and all(r["ms"] > 0 for r in rows)
    with pytest.raises(ValueError, match=r"lengths='some': accepted: fixed, vary"):
        load_suites()["attention_kernels"]({"lengths": "some"})
    with pytest.raises(ValueError, match=r"kernels='fast': accepted: comma-separated, of efficient, cudnn"):
        load_suites()["attention_kernels"]({"kernels": "fast"})
    with pytest.raises(ValueError, match=r"length=64: must be at least 2, and 130 with lengths=vary"):
        load_suites()["attention_kernels"]({**SMALL, "lengths": "vary"})
