"""Export a finished run for serving outside Python (`launch/export.py`).

    python launch/export.py runs/<name> --out exports/<name>

writes into `--out`:
- `hf/`: the Hugging Face model with the LoRA adapter folded in (in float32, then saved in the dtype of the
  model the run was made from: `dtype` in export.json), its tokenizer and the chat template the run trained
  with (`chat_template.jinja`; one the final tokenizer lacks is picked as training picks it);
- `model-<quant>.gguf` for each `--quant` (default f16 and q8_0): llama.cpp's own converter
  (`convert_hf_to_gguf.py`, from the llama-cpp-python release that is installed) writes f16/bf16/f32,
  llama.cpp's quantizer (`llama_cpp.llama_model_quantize`) the quantized types;
- `Modelfile`: Ollama's, whose template renders the chat and tool-call format of the run;
- `export.json`: what was exported, from what, what was left out, and the files written (`files`).

Exporting again into the same `--out` replaces the export there (`rl.export.folder`): the folder then holds
what the new export wrote and no file of the older export that it did not write again; a failed export changes
nothing there, and files no export wrote are left alone.

Checks of the command line (`check_run`, `check_quants`) import no model library, so bad input fails
at once with one line naming the value and what is accepted.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rl.config import ConfigError

CONVERTER_TYPES = ("f16", "bf16", "f32")  # convert_hf_to_gguf.py --outtype
QUANTIZER_TYPES = ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")  # llama_model_quantize, from the f16 file
QUANTS = CONVERTER_TYPES + QUANTIZER_TYPES
DEFAULT_QUANTS = ("f16", "q8_0")


class ExportError(ConfigError):
    """A run or an option that cannot be exported; the message names the value and what is accepted."""


def check_quants(quants: list[str]) -> list[str]:
    for quant in quants:
        if quant not in QUANTS:
            raise ExportError(f"unknown --quant {quant!r} (accepted: {', '.join(QUANTS)})")
    return list(dict.fromkeys(quants))  # each once, in the order given


def check_run(run: str | Path) -> Path:
    """The run's `final/` model folder (a merged model or a LoRA adapter), or an ExportError saying why not."""
    run = Path(run)
    if not run.exists():
        raise ExportError(f"run folder '{run}': no such folder "
                          "(expected runs/<name>, a finished grpo.py or sft.py run)")
    if not run.is_dir():
        raise ExportError(f"run folder '{run}' is a file (expected runs/<name>, a finished grpo.py or sft.py run)")
    final = run / "final"
    if not final.is_dir():
        found = sorted(p.name for p in run.iterdir() if p.is_dir())
        raise ExportError(f"run '{run}' has no final model: no '{final}' (written when a run finishes; "
                          f"its folders: {', '.join(found) or 'none'}; a checkpoint cannot be exported)")
    if not (final / "adapter_config.json").exists() and not (final / "config.json").exists():
        raise ExportError(f"'{final}' holds neither a model (config.json) nor a LoRA adapter (adapter_config.json)")
    return final


def check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out '{out}' is a file (expected a folder, new or existing)")
    return out


def export_run(run: str | Path, out: str | Path, quants: list[str] = DEFAULT_QUANTS) -> dict:
    """Export `run` into `out` (see the module docstring) in place of the export there; returns what
    `export.json` records."""
    from rl.export.folder import commit, previous_files, stage
    from rl.export.gguf import converter_dir

    check_run(run)
    quants, out = check_quants(quants), check_out(out)
    if not quants:
        raise ExportError("no --quant given (accepted: " + ", ".join(QUANTS) + ")")
    previous = previous_files(out)  # what this export replaces: a record it cannot trust is refused now
    converter_dir()  # llama.cpp installed and its converter at hand, before minutes of merging
    staging = stage(out)
    try:
        record = _write(Path(run), staging, quants)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a failed export leaves the previous one as it was
        raise
    return commit(staging, out, record, previous)


def _write(run: Path, out: Path, quants: list[str]) -> dict:
    """hf/, the GGUF files and the Modelfile in `out`; what export.json records of them."""
    from rl.export.gguf import write_gguf
    from rl.export.hf import save_merged
    from rl.export.ollama import write_modelfile

    merged = save_merged(run, out / "hf")
    ggufs = write_gguf(out / "hf", out, quants)
    record = {"run": str(run), "hf": "hf", **merged.record(), "gguf": {q: p.name for q, p in ggufs.items()},
              "notes": []}
    if merged.vision:
        record["notes"].append("a vision-language model: hf/ holds it whole (text model and vision tower); "
                               "the GGUF files hold its text model only (no vision projector is exported)")
    served = ggufs.get("q8_0") or next(iter(ggufs.values()))
    why_not = write_modelfile(out / "Modelfile", served.name, merged, run)
    if why_not:
        record["notes"].append(why_not)
    else:
        record["modelfile"] = {"file": "Modelfile", "from": served.name}
    return record
