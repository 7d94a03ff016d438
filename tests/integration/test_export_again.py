"""launch/export.py into an `--out` that holds an export already: the folder then holds what the new export
wrote (its export.json's `files`) and no file of the previous one that it did not write again; a failed export
leaves the previous one as it was; files no export wrote are kept."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from tests.integration.export_run import export_command, make_run, run_export
from tests.integration.test_export_merge import lora_run


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` (relative path) with its size and modification time."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def test_a_re_export_leaves_exactly_its_own_files_and_a_failed_one_leaves_the_previous(tmp_path):
    from rl.models import tiny_tokenizer

    run, out = make_run(tmp_path), tmp_path / "export"
    first = run_export(run, out, 3000, "--quant", "f16", "--quant", "q4_0")
    assert set(first["gguf"].values()) == {"model-f16.gguf", "model-q4_0.gguf"}
    written = listing(out)
    (out / "mine.txt").write_text("a user's own notes")
    (out / "hf" / "mine.txt").write_text("a user's own notes")

    second = run_export(run, out, 3000, "--quant", "q8_0")
    assert second["gguf"] == {"q8_0": "model-q8_0.gguf"} and second["modelfile"]["from"] == "model-q8_0.gguf"
    assert sorted(p.name for p in out.glob("*.gguf")) == ["model-q8_0.gguf"]  # f16 and q4_0 are gone
    assert sorted(first["files"]) == sorted(written)  # export.json names every file its export wrote
    assert sorted(listing(out)) == sorted([*second["files"], "mine.txt", "hf/mine.txt"])
    assert {"hf/config.json", "hf/model.safetensors", "Modelfile", "export.json"} <= set(second["files"])
    assert any("mine.txt" in note and "left as they are" in note for note in second["notes"])
    assert (out / "mine.txt").read_text() == (out / "hf" / "mine.txt").read_text() == "a user's own notes"

    # the built-in tiny's merged model is written, then its GGUF refused: the export in `out` stays whole
    before = listing(out)
    tiny = lora_run(tmp_path / "tiny", "tiny", tiny_tokenizer())
    failed = export_command(tiny, out, 3000)
    assert failed.returncode == 2 and "query_pre_attn_scalar=256" in failed.stderr, failed.stderr[-3000:]
    assert listing(out) == before
