"""GGUF files through llama.cpp's own tools: `convert_hf_to_gguf.py` and `llama_model_quantize`.

The converter is Python that ships in llama.cpp's source, not in the llama-cpp-python wheel; it is
taken from the sdist of the installed llama-cpp-python release (so it matches the compiled library
that loads its output): from `$TOOLGYM_LLAMA_CPP_SDIST` when set (a downloaded sdist), otherwise
fetched once with `pip download`, and kept in `$TOOLGYM_CACHE/llama.cpp-<version>/`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from rl.export import CONVERTER_TYPES, QUANTIZER_TYPES, ExportError

CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")  # what the converter imports
FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
          "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}


def llama_cpp_version() -> str:
    try:
        from importlib.metadata import version

        return version("llama_cpp_python")
    except Exception as e:
        raise ExportError("GGUF export needs llama.cpp: pip install 'toolgym[export]' "
                          "(llama-cpp-python, built from source for AVX2: the command is in launch/README.md)") from e


def converter_dir() -> Path:
    """A folder holding llama.cpp's convert_hf_to_gguf.py of the installed llama-cpp-python release."""
    from rl.models import cache_dir

    version = llama_cpp_version()
    target = cache_dir() / f"llama.cpp-{version}"
    if (target / "convert_hf_to_gguf.py").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Exports started together unpack once: the others wait here, then find it
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "convert_hf_to_gguf.py").exists():
            return target
        with tempfile.TemporaryDirectory() as tmp:
            sdist = os.environ.get("TOOLGYM_LLAMA_CPP_SDIST") or _download_sdist(version, Path(tmp))
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)  # what a crashed unpack left
            _unpack_converter(Path(sdist), partial)
            partial.rename(target)  # atomic: a crash mid-unpack never leaves half a converter
    return target


def _download_sdist(version: str, folder: Path) -> str:
    print(f"[toolgym] fetching llama.cpp's converter (the llama-cpp-python {version} sdist), once", flush=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                           "-d", str(folder), f"llama-cpp-python=={version}"],
                          capture_output=True, text=True, check=False)
    found = sorted(folder.glob("llama_cpp_python-*.tar.gz"))
    if done.returncode != 0 or not found:
        why = (done.stderr.strip().splitlines() or ["no sdist was written"])[-1]
        raise ExportError(f"could not fetch llama-cpp-python=={version}'s sdist, which holds llama.cpp's converter "
                          f"(pip download: {why}); point TOOLGYM_LLAMA_CPP_SDIST at that .tar.gz instead")
    return str(found[0])


def _unpack_converter(sdist: Path, target: Path) -> None:
    with tarfile.open(sdist) as tar:
        prefix = f"{tar.getnames()[0].split('/')[0]}/vendor/llama.cpp/"
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                   and any(m.name[len(prefix):].startswith(part) for part in CONVERTER_PARTS)]
        if not any(m.name.endswith("/convert_hf_to_gguf.py") for m in members):
            raise ExportError(f"{sdist} holds no vendor/llama.cpp/convert_hf_to_gguf.py "
                              "(expected a llama-cpp-python sdist)")
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(target, members=members, filter="data")


def check_convertible(hf: Path) -> None:
    """Refuse what llama.cpp would load without complaint but compute differently, or what its converter
    stops on without saying what to change."""
    import json

    config = json.loads((hf / "config.json").read_text())
    config = config.get("text_config", config)
    head_dim, scalar = config.get("head_dim"), config.get("query_pre_attn_scalar")
    if config.get("model_type", "").startswith("gemma3") and scalar not in (None, head_dim):
        raise ExportError(f"{hf}: query_pre_attn_scalar={scalar} but head_dim={head_dim}: llama.cpp scales a "
                          "Gemma 3's queries by 1/sqrt(head_dim), so its GGUF would compute another model "
                          "(accepted: query_pre_attn_scalar equal to head_dim, as in every released Gemma 3 but 27B)")
    if config.get("model_type", "").startswith("gemma4"):
        _check_gemma4(hf, config, json.loads((hf / "tokenizer.json").read_text()))


def _check_gemma4(hf: Path, config: dict, tokenizer: dict) -> None:
    """Refuse a Gemma 4 that llama.cpp's converter cannot read, naming why (it stops on a bare AssertionError,
    or on 'Cannot find Llama BPE tokenizer'); the built-in tiny-vlm is such a model on both counts."""
    problems = []
    full = [i for i, kind in enumerate(config.get("layer_types", [])) if kind == "full_attention"]
    sizes = {int(i): layer.get("head_dim") for i, layer in (config.get("per_layer_config") or {}).items()}
    if full and not config.get("global_head_dim") and not any(sizes.get(i) for i in full):
        problems.append(f"its full-attention layers keep head_dim={config.get('head_dim')}, so transformers writes "
                        "no per_layer_config and the converter finds no head size for them (accepted: a "
                        "full-attention head_dim unlike head_dim, as in every released Gemma 4)")
    model, decoder = tokenizer.get("model", {}), tokenizer.get("decoder") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback") or decoder.get("type") != "Sequence":
        problems.append(f"its tokenizer.json is a {model.get('type')} model with byte_fallback="
                        f"{model.get('byte_fallback', False)} and a {decoder.get('type')} decoder, which the converter "
                        "does not read (accepted: a sentencepiece-style BPE with byte_fallback and a Sequence "
                        "decoder, as Gemma 4's own tokenizer)")
    if problems:
        raise ExportError(f"{hf}: llama.cpp's converter cannot convert this Gemma 4: " + "; ".join(problems))


def convert(hf: Path, out: Path, outtype: str) -> Path:
    """`convert_hf_to_gguf.py hf --outtype outtype`; the converter's own error, in one line, on failure."""
    script = converter_dir() / "convert_hf_to_gguf.py"
    done = subprocess.run([sys.executable, str(script), str(hf), "--outfile", str(out), "--outtype", outtype],
                          check=False, capture_output=True, text=True)
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["(no output)"]
        raise ExportError(f"llama.cpp's converter could not convert {hf}: {last[0]}")
    return out


def quantize(source: Path, out: Path, quant: str) -> Path:
    """llama.cpp's quantizer (`llama_model_quantize`) from an f16/bf16/f32 GGUF."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[quant])
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params) != 0:
        raise ExportError(f"llama.cpp's quantizer failed on {source} -> {quant}")
    return out


def write_gguf(hf: Path, out: Path, quants: list[str]) -> dict[str, Path]:
    """One `model-<quant>.gguf` per quant; the quantized ones are made from an f16 file (kept if asked for)."""
    check_convertible(hf)
    files: dict[str, Path] = {}
    for outtype in [q for q in quants if q in CONVERTER_TYPES]:
        files[outtype] = convert(hf, out / f"model-{outtype}.gguf", outtype)
    wanted = [q for q in quants if q in QUANTIZER_TYPES]
    if wanted:
        source = files.get("f16") or convert(hf, out / "model-f16.partial.gguf", "f16")
        for quant in wanted:
            files[quant] = quantize(source, out / f"model-{quant}.gguf", quant)
        if "f16" not in files:
            source.unlink()
    return files
