"""rl.export.folder on files alone: an export moved in over an older one whose export.json predates `files`."""

import json

from rl.export.folder import STAGING, commit, previous_files, stage


def test_an_export_replaces_the_files_an_older_export_json_names_and_keeps_the_rest(tmp_path):
    out = tmp_path / "out"
    (out / "hf").mkdir(parents=True)
    for name in ("model-f16.gguf", "model-q4_0.gguf", "Modelfile", "hf/config.json", "notes.txt"):
        (out / name).write_text("old")
    (out / "export.json").write_text(json.dumps({"gguf": {"f16": "model-f16.gguf", "q4_0": "model-q4_0.gguf"},
                                                 "modelfile": {"file": "Modelfile"}}))
    previous = previous_files(out)
    assert sorted(previous) == ["Modelfile", "export.json", "model-f16.gguf", "model-q4_0.gguf"]
    staging = stage(out)
    (staging / "hf").mkdir()
    for name in ("model-q8_0.gguf", "hf/config.json"):
        (staging / name).write_text("new")
    record = commit(staging, out, {"gguf": {"q8_0": "model-q8_0.gguf"}, "notes": []}, previous)
    assert record["files"] == ["hf/config.json", "model-q8_0.gguf", "export.json"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "export.json", "hf/config.json", "model-q8_0.gguf", "notes.txt"]  # no Modelfile: this export wrote none
    assert (out / "hf" / "config.json").read_text() == "new" and (out / "notes.txt").read_text() == "old"
    assert json.loads((out / "export.json").read_text()) == record and not (out / STAGING).exists()
    assert record["notes"] == ["--out also holds notes.txt, which no export recorded writing; left as they are"]
    assert previous_files(out) == record["files"]
