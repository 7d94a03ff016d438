"""A model with a vocabulary under 1,024 tokens starts on vLLM's V1 model runner (vLLM 0.26's V2 runner samples an
id outside such a vocabulary on CUDA), unless the user chose a runner."""

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


def test_a_small_vocabulary_gets_the_v1_runner(model_dir, capsys):
    assert small_vocab_runner(model_dir({"vocab_size": 384}))
    assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "0"
    assert "vocabulary of 384 tokens" in capsys.readouterr().out


@pytest.mark.parametrize("config", [{"vocab_size": 1024}, {"vocab_size": 262144},
                                    {"text_config": {"vocab_size": 262208}}])
def test_a_vocabulary_of_1024_and_more_keeps_vllms_choice(model_dir, config):
    assert not small_vocab_runner(model_dir(config))
    assert "VLLM_USE_V2_MODEL_RUNNER" not in os.environ


def test_a_vlms_small_text_vocabulary_counts(model_dir):
    assert small_vocab_runner(model_dir({"text_config": {"vocab_size": 500}}))
    assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "0"


def test_the_users_choice_stands(model_dir, monkeypatch):
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    assert not small_vocab_runner(model_dir({"vocab_size": 384}))
    assert os.environ["VLLM_USE_V2_MODEL_RUNNER"] == "1"
