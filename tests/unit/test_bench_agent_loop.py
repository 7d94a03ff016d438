"""The agent_loop suite's options are checked before any loop's process starts."""

import pytest

from rl.bench.agent_loop import resolve_options


def test_latencies_come_as_one_number_a_list_or_a_comma_separated_string():
    assert resolve_options({})["latency_s"] == [0.05]
    assert resolve_options({"latency_s": 0})["latency_s"] == [0.0]
    assert resolve_options({"latency_s": "0,0.05"})["latency_s"] == [0.0, 0.05]  # --set latency_s=0,0.05
    assert resolve_options({"latency_s": [0, 0.05]})["latency_s"] == [0.0, 0.05]
    with pytest.raises(ValueError, match=r"latency_s='0,fast': 'fast' is not a number of seconds >= 0"):
        resolve_options({"latency_s": "0,fast"})
    with pytest.raises(ValueError, match=r"latency_s=-0.1: -0.1 is not a number of seconds >= 0"):
        resolve_options({"latency_s": -0.1})


def test_bad_backends_options_and_batch_shapes_are_named_with_what_is_accepted():
    assert resolve_options({"backend": "vllm", "dtype": "bfloat16"})["dtype"] == "bfloat16"
    with pytest.raises(ValueError, match=r"backend='sglang' is not accepted \(accepted: hf, vllm\)"):
        resolve_options({"backend": "sglang"})
    with pytest.raises(ValueError, match=r"\['kv_cache_gib'\] configure vLLM engines: they need backend=vllm"):
        resolve_options({"kv_cache_gib": 1})
    with pytest.raises(ValueError, match=r"dtype='fp8' is not accepted \(accepted: auto, float32, bfloat16, float16\)"):
        resolve_options({"backend": "vllm", "dtype": "fp8"})
    with pytest.raises(ValueError, match=r"unknown agent_loop option\(s\) \['episode'\] \(accepted: backend, "):
        resolve_options({"episode": 4})
    with pytest.raises(ValueError, match="episodes=6 must be a multiple of micro_batch=4"):
        resolve_options({"episodes": 6})
    with pytest.raises(ValueError, match="max_turns=0 must be an integer >= 1"):
        resolve_options({"max_turns": 0})
