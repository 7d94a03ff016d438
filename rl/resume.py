"""What `--resume` continues: which run, its last complete checkpoint, and its logs cut back to that checkpoint.

A run killed between checkpoints has logged steps that its resume trains again; cutting the logs back
first leaves every step in them once, however the run was stopped. Imports no torch: a finished run is
told so before any model loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from rl.config import ConfigError

# Per-step logs of a run, and which rows a checkpoint at step N keeps. A batch of episodes is logged with
# the step the trainer was at when it was generated, one before the update it feeds, so the checkpoint's
# own step's episodes carry step N-1.
STEP_LOGS = {"metrics.jsonl": 0, "episodes.jsonl": -1}


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint. The trainer writes `trainer_state.json` last, so a
    checkpoint without it was cut off mid-save (a killed job) and is passed over."""
    checkpoints = sorted((p for p in Path(out).glob("checkpoint-*") if (p / "trainer_state.json").exists()),
                         key=lambda p: int(p.name.split("-")[-1]))
    return checkpoints[-1] if checkpoints else None


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer steps a checkpoint holds (its trainer state's `global_step`)."""
    return int(json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"])


def only_run(output_dir: str | Path, env_name: str) -> str:
    """The name of the one run of `env_name` under `output_dir` (by each run's saved config.yaml).

    Resuming "the latest" run guesses wrong when runs go on side by side (a sweep), so without a name
    there must be exactly one; otherwise the error lists them."""
    runs = []
    for config in Path(output_dir).glob("*/config.yaml"):
        try:
            saved = yaml.safe_load(config.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(saved, dict) and (saved.get("env") or {}).get("name") == env_name:
            runs.append(config.parent)
    if len(runs) == 1:
        return runs[0].name
    if not runs:
        raise ConfigError(f"--resume: no runs of env {env_name!r} under {output_dir}/; pass --name")
    names = [p.name for p in sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)]
    shown = ", ".join(names[:10]) + (f", ... ({len(names) - 10} more)" if len(names) > 10 else "")
    raise ConfigError(f"--resume: {len(names)} runs of env {env_name!r} under {output_dir}/ ({shown}); "
                      "pass --name to pick one")


def finished(out: Path, max_steps: int, epochs: float | None = None) -> str | None:
    """Why resuming the run in `out` has nothing to train, or None when it has: its last checkpoint holds
    `max_steps` steps or more (TRL would train one more, and write final/ over), or, when `max_steps` is
    not set (<= 0) and the run is measured in `epochs` (SFT), that many epochs."""
    checkpoint = latest_checkpoint(out)
    if checkpoint is None:
        return None
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    step = int(state["global_step"])
    if max_steps > 0:
        if step < max_steps:
            return None
        goal = f"max_steps {max_steps}"
    elif epochs is not None and float(state.get("epoch") or 0) >= epochs - 1e-6:
        goal = f"num_train_epochs {epochs:g}"
    else:
        return None
    if not (Path(out) / "final").is_dir():  # killed while writing final/, say
        return (f"run {Path(out).name} reached step {step} ({goal}) but has no final/: its model "
                f"is in {checkpoint.name}/; nothing to train (raise the {goal.split()[0]} to train further)")
    return f"run {Path(out).name} already finished at step {step} ({goal}); nothing to do"


def resume_from(out: Path, resume: bool) -> Path | None:
    """The checkpoint a run continues from (None when it starts afresh), with its logs cut back to that
    checkpoint's step by the main process, since the steps after it are trained, and logged, again."""
    if not resume:
        return None
    checkpoint = latest_checkpoint(out)
    if checkpoint is None:
        raise FileNotFoundError(f"--resume: no checkpoint-* under {out}")
    if main_process():
        trim_logs(out, checkpoint_step(checkpoint))
    return checkpoint


def main_process() -> bool:
    """Whether this is the run's first process (RANK 0 under `accelerate launch`, or no launcher), the one
    that writes the run's files and prints what every process would; read before torch loads."""
    return int(os.environ.get("RANK", "0")) == 0


def end_process_group() -> None:
    """End the torch.distributed group a launcher set up (`accelerate launch`) as a run's process ends: where one
    is left (NCCL), torch warns at exit that destroy_process_group() was not called. Nothing where there is none,
    or where torch was never loaded."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def trim_logs(out: Path, step: int) -> None:
    """Cut the run's per-step logs back to a checkpoint at `step`: JSONL rows past it go (rows without a
    step, and their order, stay; a line torn by a kill goes too), and so do held-out results past it."""
    out = Path(out)
    for name, offset in STEP_LOGS.items():
        path = out / name
        if path.exists():
            _keep_rows(path, step + offset)
    for result in out.glob("heldout/step-*.json"):
        if result.stem.removeprefix("step-").isdigit() and int(result.stem.removeprefix("step-")) > step:
            result.unlink()


def _keep_rows(path: Path, last: int) -> None:
    """Rewrite `path` with its rows up to step `last`, atomically (a kill now leaves the old file whole)."""
    kept, changed = [], False
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                changed = True  # torn: the process died mid-write
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > last:
                changed = True
                continue
            kept.append(line if line.endswith("\n") else line + "\n")
    if not changed:
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
