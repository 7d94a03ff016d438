"""What a run shows while it trains: a progress bar with the numbers that matter, and a JSONL log."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import ProgressCallback, TrainerCallback


class RunProgress(ProgressCallback):
    """The step bar, with reward, solve rate and generation tokens/s instead of printed dicts."""

    @classmethod
    def install(cls, trainer) -> None:
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(cls())

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        shown = {"reward": "reward", "solve": "env/solved", "turns": "env/model_turns", "tok/s": "rollout/tokens_per_s"}
        postfix = {label: f"{logs[key]:.3g}" for label, key in shown.items() if key in logs}
        if postfix:
            self.training_bar.set_postfix(postfix, refresh=True)


class JsonlLogger(TrainerCallback):
    """Appends every logged dict, with its step, to `metrics.jsonl`."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")
