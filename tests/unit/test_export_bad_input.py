"""launch/export.py's bad command lines: one line naming the value and what is accepted, exit code 2,
before any model library is imported."""

import json
import subprocess
import sys

import pytest

from tests.unit.bad_inputs import HEAVY, ROOT

PLAY = """
import contextlib, io, json, sys
sys.path.insert(0, {root!r})
from tests.unit.bad_inputs import launch_main
stderr = io.StringIO()
with contextlib.redirect_stderr(stderr):
    try:
        code = launch_main("export")({argv!r})
    except SystemExit as e:
        code = e.code
print(json.dumps({{"code": code, "stderr": stderr.getvalue(), "heavy": [m for m in {heavy!r} if m in sys.modules]}}))
"""

CASES = [
    ("run_missing", ["runs/nosuch", "--out", "x"], r"run folder 'runs/nosuch': no such folder \(expected runs/<name>"),
    ("run_is_file", ["file.txt", "--out", "x"], r"run folder 'file.txt' is a file"),
    ("no_final", ["unfinished", "--out", "x"], r"run 'unfinished' has no final model: .*its folders: checkpoint-2;"),
    ("final_empty", ["empty", "--out", "x"], r"'empty/final' holds neither a model \(config.json\) nor a LoRA adapter"),
    ("quant_unknown", ["done", "--out", "x", "--quant", "q3"],
     r"unknown --quant 'q3' \(accepted: f16, bf16, f32, q8_0"),
    ("out_is_file", ["done", "--out", "file.txt"], r"--out 'file.txt' is a file"),
    ("out_record_outside", ["done", "--out", "outside"],
     r"--out 'outside': its export.json lists '../file.txt' among the files it wrote \(accepted: a path inside"),
    ("out_record_not_json", ["done", "--out", "garbled"], r"--out 'garbled': its export.json is not JSON"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_bad_export_command_line_gets_one_line(case, tmp_path):
    import re

    (tmp_path / "file.txt").write_text("")
    (tmp_path / "unfinished" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "empty" / "final").mkdir(parents=True)
    (tmp_path / "done" / "final").mkdir(parents=True)
    (tmp_path / "done" / "final" / "adapter_config.json").write_text("{}")
    for out, record in (("outside", '{"files": ["hf/config.json", "../file.txt"]}'), ("garbled", "{")):
        (tmp_path / out).mkdir()
        (tmp_path / out / "export.json").write_text(record)
    play = PLAY.format(root=str(ROOT), argv=case[1], heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", play], check=False, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    result = json.loads(out.stdout.splitlines()[-1])
    lines = result["stderr"].splitlines()
    assert result["code"] == 2 and len(lines) == 1 and lines[0].startswith("error: "), result
    assert re.search(case[2], lines[0]), lines[0]
    assert result["heavy"] == []


def test_a_gemma_3_that_llama_cpp_would_compute_differently_is_refused(tmp_path):
    """The built-in tiny's config: llama.cpp would scale its queries by 1/sqrt(32), transformers by 1/sqrt(256)."""
    from rl.export import ExportError
    from rl.export.gguf import check_convertible

    config = {"model_type": "gemma3_text", "head_dim": 32, "query_pre_attn_scalar": 256}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"query_pre_attn_scalar=256 but head_dim=32: llama\.cpp scales"):
        check_convertible(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "query_pre_attn_scalar": 32}))
    check_convertible(tmp_path)  # as Gemma 3 270M's (256 and 256) and the export test's tiny model


def test_a_converter_that_cannot_be_fetched_is_an_export_error_naming_the_way_around(tmp_path, monkeypatch):
    import shutil

    from rl.export import ExportError
    from rl.export.gguf import _download_sdist

    monkeypatch.setattr(sys, "executable", shutil.which("false"))  # pip download fails, as it does offline
    with pytest.raises(ExportError, match=r"could not fetch llama-cpp-python==0\.3\.36's sdist.*"
                                          r"no sdist was written.*TOOLGYM_LLAMA_CPP_SDIST"):
        _download_sdist("0.3.36", tmp_path)
