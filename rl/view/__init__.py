"""The episode viewer (`launch/view.py`): one self-contained HTML file for a training run, an eval result or
two eval results compared, or the same page served live for a run still training (`rl.view.serve`).

The page is `viewer.html` with its style and script inlined and the data embedded: the index (fields to
filter and sort on) as JSON, and each episode's detail as one JSON line that the page parses only when the
episode is opened. No CDN, no server: it opens from disk.
"""

from __future__ import annotations

import html
import re
from importlib import resources
from pathlib import Path

from rl.view.sources import SourceError, detail_line, load

__all__ = ["SourceError", "default_output", "load", "render", "write"]


def _asset(name: str) -> str:
    return (resources.files("rl.view") / name).read_text(encoding="utf-8")


def render(data: dict, live: bool = False) -> str:
    """The page for `load()`'s data; `live` pages fetch their episodes from the server instead."""
    meta = {**data["meta"], "live": live}
    parts = {"style": _asset("viewer.css"), "script": _asset("viewer.js"), "meta": detail_line(meta),
             "title": html.escape(str(meta.get("title", "episodes"))),
             "index": detail_line([] if live else data["index"]),
             "episodes": "" if live else "\n".join(data["lines"])}
    # one pass over the template: text put in is never searched for markers again
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], _asset("viewer.html"))


def default_output(paths: list[Path]) -> Path:
    """Beside what it shows: `<run>/view.html`, `<result>.html`, `<b>-vs-<a>.html` beside B."""
    if len(paths) == 2:
        return paths[1].with_name(f"{paths[1].stem}-vs-{paths[0].stem}.html")
    return paths[0] / "view.html" if paths[0].is_dir() else paths[0].with_suffix(".html")


def write(paths: list[str | Path], out: str | Path | None = None) -> tuple[Path, int]:
    """Write the viewer of `paths`; returns the file and how many episodes it holds."""
    paths = [Path(p) for p in paths]
    data = load(paths)
    target = Path(out) if out else default_output(paths)
    target.write_text(render(data), encoding="utf-8")
    return target, len(data["index"])
