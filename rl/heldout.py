"""Held-out evaluation during GRPO: the same seeds, greedy, before the first step and every N steps.

Per-step training rates are noisy (each step draws new puzzles and samples at temperature),
so a run's curve says little about progress. `HeldOutEval` plays the first
`eval.during_training` held-out seeds (those `launch/eval.py` starts with) with the
current weights through the rollout backend, and logs `heldout/solve_rate`,
`heldout/mean_return`, `heldout/invalid_call_rate`, `heldout/format_error_rate` and, for an env that counts its
moves by kind, each kind's share of all moves (`heldout/moves/<kind>`): at step 0 (the starting model, e.g.
the SFT checkpoint) and at every `eval.every_steps`-th step, into metrics.jsonl and the
curve, computed as `launch/eval.py` computes them. Each measurement is also written as an eval.py
result, `<run>/heldout/step-<N>.json`, with every episode's outcome, so any two of them, or one and
an `eval.py` result on the same seeds, compare pairwise (`eval.py --compare`). Under data parallelism
every process plays
its share of the seeds and the episodes are gathered, so each process takes part in the
gathers (ZeRO-3 generation needs that too).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from accelerate.utils import gather_object
from transformers import TrainerCallback

from envs.base import closing_envs
from rl.evaluation import eval_result
from rl.rollout import run_episodes
from rl.trl_hooks import step_metrics


class HeldOutEval(TrainerCallback):
    def __init__(self, trainer, rollouts):
        self.trainer, self.rollouts = trainer, rollouts
        e = rollouts.cfg.eval
        self.every, self.seeds = e.every_steps, list(range(e.seed_start, e.seed_start + e.during_training))
        self.settings = dataclasses.replace(rollouts.cfg.rollout, temperature=e.temperature)
        self.out = Path(rollouts.log_dir) / "heldout" if rollouts.log_dir is not None else None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:  # the starting model; a resumed run measured it already
            self.trainer.log(self.measure(0))

    def on_step_end(self, args, state, control, **kwargs):
        # every N steps, and at the last step (max_steps, or a time limit: decided before this
        # callback, the same on every rank), so the curve ends on the model in final/
        if state.global_step % self.every == 0 or control.should_training_stop:  # logged with this step's metrics
            for key, value in self.measure(state.global_step).items():
                step_metrics(self.trainer, "train")[key].append(value)

    def measure(self, step: int) -> dict[str, float]:
        trainer, acc = self.trainer, self.trainer.accelerator
        seeds = self.seeds[acc.process_index::acc.num_processes]
        training = trainer.model.training
        trainer.model.eval()
        started = time.perf_counter()
        try:
            # as the training rollout plays; the envs are closed also when the batch raises (a remote env keeps
            # its server session until closed)
            with self.rollouts.synced_backend(trainer) as backend, closing_envs([]) as envs:
                for _ in seeds:
                    envs.append(self.rollouts.env_cls(**self.rollouts.env_kwargs_for(trainer)))
                trajectories = run_episodes(envs, seeds, backend, self.rollouts.chat, self.settings)
        finally:
            trainer.model.train(training)
        played = dict(gather_object([(seed, t.info) for seed, t in zip(seeds, trajectories)]))  # every process's
        cfg = self.rollouts.cfg
        result = eval_result(cfg, f"{cfg.name}@step-{step}", backend.name, self.seeds,
                             [played[seed] for seed in self.seeds], self.settings.temperature, step=step,
                             wall_s=time.perf_counter() - started)
        if acc.is_main_process and self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / f"step-{step}.json").write_text(json.dumps(result, indent=2))
        return {**{f"heldout/{key}": float(result[key])
                   for key in ("solve_rate", "mean_return", "invalid_call_rate", "format_error_rate", "episodes")},
                **{f"heldout/moves/{kind}": share for kind, share in result.get("move_shares", {}).items()}}
