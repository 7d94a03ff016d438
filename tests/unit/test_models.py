"""LoRA configuration: vision towers excluded, tied embeddings trainable."""


def test_lora_excludes_vision_tower_and_can_train_tied_embeddings():
    import torch
    from peft import get_peft_model

    from rl.config import LoraConfig
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
    peft_model = get_peft_model(model, lora_config(LoraConfig(), model))
    adapted = {name for name, _ in peft_model.named_modules() if name.endswith("lora_A")}
    assert adapted and not any("vision_tower" in n or "multi_modal_projector" in n for n in adapted)
    assert any("q_proj" in n for n in adapted)

    text_model = tiny_model(vocab_size=64)
    cfg = lora_config(LoraConfig(modules_to_save=["embed_tokens"]), text_model)
    assert cfg.exclude_modules is None and cfg.ensure_weight_tying and "embed_tokens" in cfg.modules_to_save
