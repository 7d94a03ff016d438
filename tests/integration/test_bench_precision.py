"""The precision suite: full float32 is the baseline its other rows are measured against."""


def test_precision_rows_measure_speed_and_logprob_drift_against_full_float32():
    import pytest

    from rl.bench import load_suites

    rows = load_suites()["precision"]({"model": "tiny", "rows": 2, "context": 8, "new_tokens": 2, "train_len": 16,
                                       "repeats": 1})
    by_mode = {r["mode"]: r for r in rows}
    assert list(by_mode) == ["float32", "tf32", "bfloat16", "bf16_attention", "autocast"]
    base = by_mode["float32"]
    assert base["logprob_drift_max"] == 0 and base["generate_speedup"] == base["train_speedup"] == 1
    assert by_mode["bfloat16"]["logprob_drift_mean"] > 0  # bf16 weights do move the policy's logprobs
    # so does attention in bf16, less than bf16 everywhere
    assert 0 < by_mode["bf16_attention"]["logprob_drift_mean"] < by_mode["bfloat16"]["logprob_drift_mean"]
    assert by_mode["autocast"]["logprob_drift_mean"] > 0  # and so do bf16 products on float32 weights
    for r in rows:
        assert r["generated_tokens_per_s"] == pytest.approx(2 * 2 / r["generate_s"])
        assert r["generate_speedup"] == pytest.approx(base["generate_s"] / r["generate_s"])
    small = {"model": "tiny", "rows": 1, "context": 4, "new_tokens": 1, "train_len": 8, "repeats": 1,
             "modes": "bfloat16"}
    assert [r["mode"] for r in load_suites()["precision"](small)] == ["bfloat16"]
    accepted = r"\(accepted: float32, tf32, bfloat16, bf16_attention, autocast\)"
    with pytest.raises(ValueError, match=r"unknown precision mode\(s\) \['fp8'\] " + accepted):
        load_suites()["precision"]({"model": "tiny", "modes": "fp8"})


def test_each_mode_is_timed_at_its_own_precision_whatever_model_loading_sets(monkeypatch):
    import torch

    from rl.bench import precision

    load, timed, seen, products = precision._model, precision.timed, [], []
    linear = torch.nn.functional.linear

    def recording_linear(*args, **kwargs):
        out = linear(*args, **kwargs)
        products[-1].add(out.dtype)
        return out

    def loading_like_a_gpu(options, dtype, attention):  # load_model turns TF32 on for float32 weights on a GPU
        model = load(options, dtype, attention)
        torch.set_float32_matmul_precision("high")
        return model

    def recording(fn, repeats, device):
        seen.append(torch.get_float32_matmul_precision())
        products.append(set())
        return timed(fn, repeats, device)

    monkeypatch.setattr(torch.nn.functional, "linear", recording_linear)
    monkeypatch.setattr(precision, "_model", loading_like_a_gpu)
    monkeypatch.setattr(precision, "timed", recording)
    precision.precision({"model": "tiny", "rows": 1, "context": 4, "new_tokens": 1, "train_len": 8, "repeats": 1})
    # generate and train, per mode
    assert seen == ["highest", "highest", "high", "high", "highest", "highest", "high", "high", "high", "high"]
    # the products each timed call ran: bfloat16 weights' and the autocast's in bf16, the others' in float32
    f32, bf16 = {torch.float32}, {torch.bfloat16}
    assert products == [f32, f32, f32, f32, bf16, bf16, f32, f32, bf16, bf16]
