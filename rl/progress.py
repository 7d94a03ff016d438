"""What a run shows while it trains: a progress bar with the numbers that matter, and a JSONL log."""

from __future__ import annotations

import json
import time
from pathlib import Path

from accelerate.utils import broadcast_object_list
from transformers import ProgressCallback, TrainerCallback

from rl.config import RunConfig, to_dict
from rl.plots import save_curve


class RunProgress(ProgressCallback):
    """The step bar, with reward, solve rate and generation tokens/s instead of printed dicts; while a
    step generates, episodes ended and tokens/s (every few seconds); after the first step, how long the
    run will take at that pace."""

    every_s = 3.0  # bar updates while generating, at most this often

    def __init__(self):
        super().__init__()
        self.started = self.last_shown = self.generating_since = 0.0
        self.begin_step = 0

    @classmethod
    def install(cls, trainer) -> RunProgress:
        trainer.remove_callback(ProgressCallback)
        progress = cls()
        trainer.add_callback(progress)
        return progress

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self.started, self.begin_step = time.monotonic(), state.global_step  # a resumed run begins later

    def generating(self, done: int, total: int, tokens: int) -> None:
        """A rollout's progress: (episodes ended, episodes, tokens generated); shown every `every_s`."""
        now = time.monotonic()
        if done == 0 or not self.generating_since:  # a batch starts (0 of it done)
            self.generating_since = now
        if self.training_bar is None or (now - self.last_shown < self.every_s and done < total):
            return
        self.last_shown = now
        rate = tokens / max(now - self.generating_since, 1e-9)
        self.training_bar.set_postfix({"episodes": f"{done}/{total}", "tok/s": f"{rate:.0f}"}, refresh=True)
        if done == total:
            self.generating_since = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        left_steps = state.max_steps - state.global_step
        if state.is_world_process_zero and state.global_step == self.begin_step + 1 and left_steps > 0:
            step_s = time.monotonic() - self.started
            left = step_s * left_steps
            print(f"[toolgym] step {state.global_step} took {step_s:.0f} s: the {left_steps} steps left take about "
                  f"{_duration(left)} at that pace (grpo.max_steps={state.max_steps}; grpo.time_limit_s caps "
                  "the wall time)", flush=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs:
            return
        shown = {"reward": "reward", "solve": "env/solved", "turns": "env/model_turns", "tok/s": "rollout/tokens_per_s"}
        postfix = {label: f"{logs[key]:.3g}" for label, key in shown.items() if key in logs}
        if postfix:
            self.training_bar.set_postfix(postfix, refresh=True)


class JsonlLogger(TrainerCallback):
    """Appends every logged dict, with its step, to `metrics.jsonl`, and redraws `curve.png` beside it
    at every checkpoint, so a run stopped at any point leaves its curve up to its last checkpoint."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            save_curve(self.path.parent)


class TimeLimit(TrainerCallback):
    """Ends training at the first optimizer step that finishes `seconds` after training began, with a
    checkpoint saved, as if max_steps had been reached. Rank 0's clock decides for every rank: ranks
    that stopped at different steps would hang in their next collective."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        decision = [time.monotonic() - self.start >= self.seconds]
        if args.world_size > 1:
            broadcast_object_list(decision, from_process=0)
        if decision[0]:
            control.should_training_stop = True
            control.should_save = True
            if state.is_world_process_zero:
                print(f"grpo.time_limit_s={self.seconds:g} reached at step {state.global_step}: stopping there")


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


class WandbRunConfig(TrainerCallback):
    """Puts the whole resolved toolgym config (env, rollout, rewards, ...) into the wandb run's config,
    beside TRL's arguments, once TRL's wandb callback has started the run."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    def on_train_begin(self, args, state, control, **kwargs):
        import wandb

        if state.is_world_process_zero and wandb.run is not None:
            wandb.config.update({"toolgym": to_dict(self.cfg)}, allow_val_change=True)
