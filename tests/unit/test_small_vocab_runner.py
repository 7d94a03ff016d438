"""A model with a vocabulary under 1,024 tokens starts on vLLM's V1 model runner (vLLM 0.26's V2 runner samples an
id outside such a vocabulary on CUDA), unless the user chose a runner; the choice is in the environment only while
the engine starts."""

import json
import os

import pytest

from rl.vllm_weights import small_vocab_runner


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "")  # recorded, so what the tests set is undone
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER")

    def write(config):
        (tmp_path / "config.json").write_text(json.dumps(config))
        return tmp_path
    return write


def test_a_small_vocabulary_gets_the_v1_runner_while_the_engine_starts(model_dir, capsys):
    with small_vocab_runner(model_dir({"vocab_size": 384})) as chosen:
        assert chosen and os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "0"
    assert "VLLM_USE_V2_MODEL_RUNNER" not in os.environ  # processes and engines started later do not inherit it
    assert "vocabulary of 384 tokens" in capsys.readouterr().out


def test_an_engine_that_fails_to_start_leaves_no_choice_behind(model_dir):
    with pytest.raises(RuntimeError, match="no engine"), small_vocab_runner(model_dir({"vocab_size": 384})):
        raise RuntimeError("no engine")
    assert "VLLM_USE_V2_MODEL_RUNNER" not in os.environ


@pytest.mark.parametrize("config", [{"vocab_size": 1024}, {"vocab_size": 262144},
                                    {"text_config": {"vocab_size": 262208}}])
def test_a_vocabulary_of_1024_and_more_keeps_vllms_choice(model_dir, config):
    with small_vocab_runner(model_dir(config)) as chosen:
        assert not chosen and "VLLM_USE_V2_MODEL_RUNNER" not in os.environ
    assert "VLLM_USE_V2_MODEL_RUNNER" not in os.environ


def test_a_vlms_small_text_vocabulary_counts(model_dir):
    with small_vocab_runner(model_dir({"text_config": {"vocab_size": 500}})) as chosen:
        assert chosen and os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "0"


@pytest.mark.parametrize("users", ["1", "0", ""])
def test_the_users_choice_stands_and_stays(model_dir, monkeypatch, capsys, users):
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", users)
    with small_vocab_runner(model_dir({"vocab_size": 384})) as chosen:
        assert not chosen and os.environ["VLLM_USE_V2_MODEL_RUNNER"] == users
    assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == users
    assert capsys.readouterr().out == ""
