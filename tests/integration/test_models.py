"""LoRA configuration: vision towers excluded, tied embeddings trainable."""


def test_lora_excludes_vision_tower_and_can_train_tied_embeddings():
    import torch
    from peft import get_peft_model

    from rl.config import LoraSection
    from rl.models import lora_config, tiny_model

    class ToyVLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.language_model = tiny_model(vocab_size=64)
            self.vision_tower = torch.nn.Sequential(torch.nn.Linear(8, 8))
            self.multi_modal_projector = torch.nn.Linear(8, 64)

        def prepare_inputs_for_generation(self, *args, **kwargs):  # peft's CAUSAL_LM wrapper asks for it
            return kwargs

    model = ToyVLM()
    peft_model = get_peft_model(model, lora_config(LoraSection(), model))
    adapted = {name for name, _ in peft_model.named_modules() if name.endswith("lora_A")}
    assert adapted and not any("vision_tower" in n or "multi_modal_projector" in n for n in adapted)
    assert any("q_proj" in n for n in adapted)

    text_model = tiny_model(vocab_size=64)
    cfg = lora_config(LoraSection(modules_to_save=["embed_tokens"]), text_model)
    assert cfg.exclude_modules is None and cfg.ensure_weight_tying and "embed_tokens" in cfg.modules_to_save


def test_float32_weights_on_a_gpu_get_tf32_matmuls_unless_model_tf32_is_false(monkeypatch):
    import pytest
    import torch

    from rl.config import ConfigError, ModelSection, RunConfig, validate
    from rl.models import load_model

    before = torch.get_float32_matmul_precision()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # only the precision switch asks
    try:
        load_model(ModelSection(name="tiny", dtype="float32", tf32=False))
        assert torch.get_float32_matmul_precision() == "highest"
        load_model(ModelSection(name="tiny", dtype="float32"))
        assert torch.get_float32_matmul_precision() == "high"  # TF32, the default
        torch.set_float32_matmul_precision("highest")
        load_model(ModelSection(name="tiny", dtype="bfloat16"))
        assert torch.get_float32_matmul_precision() == "highest"  # not float32 weights: left alone
    finally:
        torch.set_float32_matmul_precision(before)
    with pytest.raises(ConfigError, match="model.tf32 must be true or false, got 'yes please'"):
        validate(RunConfig(model=ModelSection(tf32="yes please")))


def test_processes_starting_together_convert_the_default_model_once(tmp_path, monkeypatch):
    """Two first loads at once (an eval beside a training run on a fresh machine): one converts, the other
    waits for it and finds the cache."""
    import threading
    import time

    import rl.models

    monkeypatch.setenv("TOOLGYM_CACHE", str(tmp_path))
    converted = []

    def convert(assemble, target):
        converted.append(target)
        time.sleep(0.5)  # the other caller arrives while this one converts
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        return target

    monkeypatch.setattr(rl.models, "_convert_gemma", convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(rl.models.gemma_270m_path())) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert converted == [tmp_path / "gemma-3-270m"] and results == [tmp_path / "gemma-3-270m"] * 3
