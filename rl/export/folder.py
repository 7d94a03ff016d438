"""The `--out` folder holds one export: exporting again into it replaces what the previous export wrote.

An export writes its files into `--out/.export-partial/` first; only when every file is written does it move
them into `--out`, remove the files the previous export recorded that it did not write again (an older
`model-q4_k_m.gguf`, say), and write `export.json`, whose `files` lists what it wrote (paths relative to
`--out`, `export.json` included). A failed export leaves the previous one as it was. Files no export recorded
are never removed (they are named in a note); an `export.json` written before `files` was recorded names its
GGUF files and its Modelfile, and those are what is replaced.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path, PurePosixPath

from rl.export import ExportError

STAGING = ".export-partial"
RECORD = "export.json"


def previous_files(out: Path) -> list[str]:
    """The files the export in `out` wrote, as its export.json records them ([] when there is none);
    an ExportError when that record cannot be trusted to name files inside `out`."""
    path = out / RECORD
    if not path.is_file():
        return []
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"--out '{out}': its {RECORD} is not JSON ({e}), so the files of the export there are "
                          f"unknown (accepted: a folder whose {RECORD} an export wrote, or one without it)") from e
    if not isinstance(record, dict):
        raise ExportError(f"--out '{out}': its {RECORD} holds {type(record).__name__}, not an export's record")
    files = record.get("files")
    if files is None:  # written before exports recorded their files
        files = [*(record.get("gguf") or {}).values(), *(["Modelfile"] if "modelfile" in record else []), RECORD]
    for name in files:
        parts = PurePosixPath(name).parts if isinstance(name, str) else ()
        if not parts or parts[0] == "/" or ".." in parts or STAGING in parts:
            raise ExportError(f"--out '{out}': its {RECORD} lists {name!r} among the files it wrote (accepted: a "
                              f"path inside --out, relative, without '..'); remove that file by hand")
    return list(files)


def stage(out: Path) -> Path:
    """An empty staging folder inside `out` (one a killed export left is removed: only exports write there)."""
    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def commit(staging: Path, out: Path, record: dict, previous: list[str]) -> dict:
    """Move the staged export into `out` over the previous one; returns `record` with `files` and notes."""
    files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    for name in files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, out / name)
    for name in sorted(set(previous) - set(files) - {RECORD}, reverse=True):
        _remove(out, name)
    record["files"] = [*files, RECORD]
    written = {PurePosixPath(name).parts[0] for name in record["files"]} | {STAGING}
    others = sorted(p.name for p in out.iterdir() if p.name not in written)
    if others:
        record["notes"].append(f"--out also holds {', '.join(others)}, which no export recorded writing; "
                               "left as they are")
    (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    os.replace(staging / RECORD, out / RECORD)
    shutil.rmtree(staging)
    return record


def _remove(out: Path, name: str) -> None:
    """Remove a file of the previous export, and the folders that held it if that leaves them empty."""
    path = out / name
    if path.is_file() or path.is_symlink():
        path.unlink()
    parent = path.parent
    while parent != out and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent
