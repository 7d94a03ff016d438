"""What the viewer shows, read from a training run (`episodes.jsonl`), an eval result (`launch/eval.py`'s JSON,
and its episodes turn by turn where it names a file of them) or two eval results paired on the seeds both played.

Every source gives the same shape: `meta` (what it is), and per episode an index entry (the few fields the
viewer filters and sorts on, parsed at once) and a detail line (the whole episode as one JSON line, which the
page parses only when the episode is opened; thousands of episodes then open in a moment).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml


class SourceError(ValueError):
    pass


def clean(value: Any) -> Any:
    """JSON a browser parses: NaN and infinities (which Python's json writes) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean(v) for v in value]
    return value


def detail_line(value: Any) -> str:
    """One JSON line that is safe inside an HTML <script> block: no raw `<`, so no `</script>` can end it."""
    return json.dumps(clean(value), separators=(",", ":")).replace("<", "\\u003c")


def run_entry(row: dict) -> dict:
    info = row.get("info") or {}
    return {"step": row.get("step"), "seed": row.get("seed"), "reward": _finite(row.get("reward")),
            "solved": bool(info.get("solved")), "turns": info.get("model_turns"), **_stop_and_error(info),
            "tokens": "tokens" in row}


def _stop_and_error(info: dict) -> dict:
    return {"stop": info.get("stop_reason") or "", "error": bool(info.get("env_error") or info.get("generation_error"))}


def parse_row(path: Path, number: int, raw: str) -> dict:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: episode line {number} is not JSON ({e.msg})") from None


class EpisodeFile:
    """`episodes.jsonl` read incrementally: each `read()` takes the complete lines written since the last one
    (a line still being written waits), and starts over if the file was cut or replaced (a resumed run trims it
    into a new file, which may have grown past the old one's length by the next read); `version` counts those."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset, self.version, self.file = 0, 0, None
        self.index: list[dict] = []
        self.lines: list[str] = []

    def read(self) -> int:
        """Read what is new; returns how many episodes came in (all of them again after a cut)."""
        stat = self.path.stat() if self.path.exists() else None
        size, file = (stat.st_size, (stat.st_dev, stat.st_ino)) if stat else (0, None)
        if size < self.offset or (self.offset and file != self.file):
            self.offset, self.index, self.lines, self.version = 0, [], [], self.version + 1
        self.file = file
        if size == self.offset:
            return 0
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        complete = chunk[: chunk.rfind(b"\n") + 1]
        before = len(self.lines)
        rows = [parse_row(self.path, number, raw)  # all or nothing: a bad line is read again, and named, next time
                for number, raw in enumerate(complete.decode().splitlines(), start=before + 1) if raw.strip()]
        self.offset += len(complete)
        self.index += [run_entry(row) for row in rows]
        self.lines += [detail_line(row) for row in rows]
        return len(self.lines) - before


def run_meta(run: Path) -> dict:
    meta = {"kind": "run", "title": run.name, "source": str(run)}
    config = run / "config.yaml"
    if config.exists():
        cfg = yaml.safe_load(config.read_text()) or {}
        meta.update(env=(cfg.get("env") or {}).get("name"), model=(cfg.get("model") or {}).get("name"),
                    step_advantage_weight=(cfg.get("grpo") or {}).get("step_advantage_weight"))
    return meta


def eval_entry(row: dict, played: dict | None) -> dict:
    """An eval episode's outcome; its stop reason and env error where its turns were written (`played`)."""
    return {"step": None, "seed": row.get("seed"), "sample": row.get("sample"), "reward": _finite(row.get("return")),
            "solved": bool(row.get("solved")), "turns": row.get("turns"),
            **_stop_and_error(played["info"] if played else {}), "tokens": False, "played": played is not None}


def read_eval(path: Path) -> dict:
    try:
        result = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SourceError(f"{path}: not a readable eval result ({e})") from None
    if not isinstance(result, dict) or "per_episode" not in result:
        raise SourceError(f"{path}: an eval result needs per-episode outcomes (`per_episode`, written by "
                          "launch/eval.py); evaluate that model again")
    return result


def read_played(path: Path, result: dict) -> tuple[dict, str]:
    """The episodes an eval result names (`episodes_file`, beside it; rl.episode_log.eval_rows) by (seed,
    sample), and a note when it names one that is gone. Older results, and eval.transcripts=0, name none."""
    name = result.get("episodes_file")
    if not name:
        return {}, ""
    file = Path(path).parent / name
    if not file.is_file():  # a result copied without it still shows its outcomes
        return {}, f"{name} not found: outcomes only"
    rows = (parse_row(file, n, raw) for n, raw in enumerate(file.read_text().splitlines(), 1) if raw.strip())
    return {(row.get("seed"), row.get("sample")): row for row in rows}, ""


def summary(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "per_episode"}


def eval_source(path: Path) -> dict:
    result = read_eval(path)
    rows = result["per_episode"]
    played, note = read_played(path, result)
    pairs = [(r, played.get((r["seed"], r["sample"]))) for r in rows]
    meta = {"kind": "eval", "title": result.get("label") or Path(path).stem, "source": str(path),
            "env": result.get("env"), "summary": clean(summary(result)), "played": len(played), "note": note}
    return {"meta": meta, "index": [eval_entry(r, p) for r, p in pairs],
            "lines": [detail_line(p or r) for r, p in pairs]}


def compare_source(path_a: Path, path_b: Path) -> dict:
    """Two eval results on the (seed, sample) pairs both played; each pair says who solved it."""
    from rl.evaluation import paired_comparison

    a, b = read_eval(path_a), read_eval(path_b)
    label_a, label_b = a.get("label") or "A", b.get("label") or "B"
    if label_a == label_b:
        label_a, label_b = str(path_a), str(path_b)
    try:  # the same env settings, episodes in common, and McNemar's test on them, as eval.py --compare says
        comparison = paired_comparison({**a, "label": label_a}, {**b, "label": label_b})
    except ValueError as e:
        raise SourceError(str(e)) from e
    second = {(r["seed"], r["sample"]): r for r in b["per_episode"]}
    (played_a, note_a), (played_b, note_b) = read_played(path_a, a), read_played(path_b, b)
    index, lines = [], []
    for row in a["per_episode"]:
        key = (row["seed"], row["sample"])
        other = second.get(key)
        if other is None:
            continue
        entry = eval_entry(other, played_b.get(key))
        entry["pair"] = {(True, True): "both solved", (True, False): f"only {label_a}",
                         (False, True): f"only {label_b}", (False, False): "neither"}[
            (bool(row["solved"]), bool(other["solved"]))]
        entry["reward_a"] = _finite(row.get("return"))
        entry["played"] = entry["played"] or key in played_a
        index.append(entry)
        lines.append(detail_line({"a": played_a.get(key, row), "b": played_b.get(key, other)}))
    meta = {"p_value": comparison["p_value"], "kind": "compare", "title": f"{label_b} vs {label_a}",
            "labels": [label_a, label_b],
            "source": f"{path_a} {path_b}", "env": a.get("env"), "summary": [clean(summary(a)), clean(summary(b))],
            "played": len(played_a) + len(played_b), "note": "; ".join(filter(None, (note_a, note_b)))}
    return {"meta": meta, "index": index, "lines": lines}


def load(paths: list[str | Path]) -> dict:
    """The viewer's data for a run folder, one eval result, or two eval results (compared)."""
    paths = [Path(p) for p in paths]
    if len(paths) == 2:
        return compare_source(*paths)
    if len(paths) != 1:
        raise SourceError(f"give a run folder, an eval result, or two eval results to compare; got {len(paths)} paths")
    path = paths[0]
    if path.is_dir():
        episodes = EpisodeFile(path / "episodes.jsonl")
        if not episodes.path.exists():
            raise SourceError(f"{path}: no episodes.jsonl (accepted: a run folder of launch/grpo.py, an eval "
                              "result .json, or two of them)")
        episodes.read()
        return {"meta": run_meta(path), "index": episodes.index, "lines": episodes.lines}
    if path.suffix == ".json":
        return eval_source(path)
    raise SourceError(f"{path}: not a run folder or an eval result .json")


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
