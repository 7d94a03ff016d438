"""A finished toolgym run of a tiny model that llama.cpp can convert, for the export tests.

The built-in `tiny` cannot be: its Gemma 3 scales queries by query_pre_attn_scalar=256 (the config's
default) where llama.cpp's Gemma 3 uses 1/sqrt(head_dim)=1/sqrt(32), and its locally trained byte-level
BPE tokenizer is one llama.cpp's converter does not know (it recognises BPE tokenizers by a hash of
their output, and takes a Gemma's from a sentencepiece `tokenizer.model`). This model is `tiny` with
query_pre_attn_scalar=head_dim and a sentencepiece tokenizer trained here on the same kind of text; its
base model is taught the Sudoku call format for a few steps (a random model's greedy continuation is one
token repeated, which would make a weak comparison), and its run holds a LoRA adapter with small random
(non-zero) weights, so the export's merge changes the model.

The other export tests build their runs and compare their GGUFs with the helpers here too.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from rl.config import load_config, to_yaml
from rl.models import CHAT_SPECIAL_TOKENS

ROOT = Path(__file__).resolve().parents[2]
TOKENS = 32  # greedy tokens compared between transformers and llama.cpp
PREFIX = '<tool_call>\n{"name": "'  # configs/sudoku.yaml's rollout.response_prefix
CORPUS = [
    'You can call these tools: {"name": "place", "description": "Write a digit.", "parameters": {}}',
    '<tool_call>\n{"name": "place", "arguments": {"row": 1, "col": 2, "digit": 3}}\n</tool_call>',
    "<tool_response>\nPlaced 3 at row 1, column 2.\nRow 1: 1 . | 3 .\n</tool_response>",
    "Solve this 4x4 Sudoku. Every row, column and box must contain each digit. Error: no tool call.",
]


def sentencepiece_model(path: Path, corpus: list[str] = CORPUS, symbols: list[str] = CHAT_SPECIAL_TOKENS) -> None:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 4), model_writer=model, vocab_size=400, hard_vocab_limit=False,
        model_type="bpe", byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>",
        eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=symbols,
        add_dummy_prefix=False, normalization_rule_name="identity", remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, minloglevel=2)
    path.write_bytes(model.getvalue())


def sudoku_turn(tokenizer, seed: int, prefix: str = PREFIX) -> str:
    """The first prompt of a Sudoku episode as a run renders it, opened with the Sudoku config's prefix."""
    import envs

    env = envs.make("sudoku", size=4)
    observation, _ = env.reset(seed=seed)
    return tokenizer.apply_chat_template([{"role": "user", "content": observation}], tools=env.tool_schemas(),
                                         tokenize=False, add_generation_prompt=True) + prefix


def train_on(model, tokenizer, texts: list[str], steps: int) -> None:
    """`steps` steps of next-token training on `texts` as one batch (padded with id 0, which the loss skips)."""
    import torch

    ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    width = max(map(len, ids))
    batch = torch.tensor([i + [0] * (width - len(i)) for i in ids])
    labels = torch.where(batch == 0, -100, batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        model(input_ids=batch, labels=labels).loss.backward()
        optimizer.step()
    model.eval()


def teach_calls(model, tokenizer, steps: int = 50, seeds: int = 4) -> None:
    """A few steps of next-token training on Sudoku turns that end in the expert's call."""
    import envs
    from envs.sudoku.expert import SudokuExpert

    texts = []
    for seed in range(seeds):
        env = envs.make("sudoku", size=4)
        env.reset(seed=seed)
        call = SudokuExpert(explore=0.0)(env)
        texts.append(sudoku_turn(tokenizer, seed) + f'{call.name}", "arguments": {json.dumps(call.arguments)}}}'
                     "\n</tool_call><end_of_turn>\n")
    train_on(model, tokenizer, texts, steps)


def save_run(lora, tokenizer, run: Path, config: str, overrides: list[str], std: float = 0.02) -> Path:
    """A run folder as grpo.py leaves one: `final/` holds the adapter, its lora_B weights drawn with `std` (not
    zero, so merging it changes the model), and the tokenizer; `config.yaml` is configs/<config> with `overrides`."""
    import torch

    for name, weight in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight, std=std)
    lora.save_pretrained(run / "final")
    tokenizer.save_pretrained(run / "final")
    cfg = load_config(ROOT / "configs" / config, [*overrides, f"name={run.name}", f"output_dir={run.parent}"])
    (run / "config.yaml").write_text(to_yaml(cfg))
    return run


def make_run(folder: Path, seed: int = 0, dtype: str = "float32") -> Path:
    """`folder/base` (the model, saved in `dtype`) and `folder/run` (config.yaml, final/ with the adapter, trained
    on the base as a run loads it: in float32); returns the run."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    from rl.chat import load_template

    base, run = folder / "base", folder / "run"
    base.mkdir(parents=True)
    sentencepiece_model(base / "tokenizer.model")
    (base / "tokenizer_config.json").write_text('{"tokenizer_class": "GemmaTokenizer"}')
    tokenizer = AutoTokenizer.from_pretrained(base)  # transformers builds its fast tokenizer from the file
    tokenizer.chat_template = load_template("gemma3_tools")
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
        max_position_embeddings=4096, sliding_window=512, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        tie_word_embeddings=True)
    model = Gemma3ForCausalLM(config)
    teach_calls(model, tokenizer)
    model.to(getattr(torch, dtype)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    model.to(torch.float32)  # as a run loads its base (model.dtype's default on a CPU)
    model.name_or_path = str(base)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    # lora_B weights of std 0.02: small, so the taught format survives the adapter
    return save_run(lora, tokenizer, run, "sudoku.yaml", [f"model.name={base}"])


def export_command(run: Path, out: Path, timeout: int, *args: str) -> subprocess.CompletedProcess:
    """launch/export.py `run` --out `out` `args`, run to its end."""
    return subprocess.run([sys.executable, str(ROOT / "launch" / "export.py"), str(run), "--out", str(out), *args],
                          check=False, capture_output=True, text=True, timeout=timeout)


def run_export(run: Path, out: Path, timeout: int, *args: str) -> dict:
    """launch/export.py `run` --out `out` `args`; its export.json."""
    done = export_command(run, out, timeout, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "export.json").read_text())


def hf_greedy(model, ids: list[int], n: int = TOKENS) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def llama_greedy(gguf: Path, ids: list[int], n: int = TOKENS) -> tuple[list[int], object]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=2048, n_threads=2, verbose=False)
    out = []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        out.append(token)
        if len(out) == n:
            break
    return out, llm
