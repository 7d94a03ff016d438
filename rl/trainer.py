"""A GRPO run: TRL's GRPOTrainer (`rl.trl_hooks`) with toolgym's rollout engine as its `rollout_func`.

TRL computes advantages, the loss and the optimizer step; everything about episodes (envs, multi-turn
generation, tool calls, `env_mask`) happens in `rl.rollout`. Episode facts are returned beside the token
ids, so TRL hands them to every reward function as keyword arguments.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from datasets import Dataset
from trl import GRPOConfig

import envs as envs_registry
from envs.base import close_envs
from envs.remote import RemoteEnv, remote_stats, urls_for_rank
from rewards import named_rewards
from rl import trl_contract
from rl.chat import ChatFormat
from rl.cli import apply_run_environment, check_resolvable
from rl.config import ConfigError, RunConfig, to_yaml
from rl.config_checks import grouping_changes_gradient
from rl.episode_log import Scores, sample_rows
from rl.generation import TransformersBackend
from rl.guards import SkipNonFiniteUpdates
from rl.heldout import HeldOutEval
from rl.models import load_image_tokenizer, load_model, load_tokenizer, lora_config, save_adapters_offline
from rl.plots import save_curve
from rl.preflight import check_rewards
from rl.progress import JsonlLogger, RunProgress, TimeLimit, WandbRunConfig
from rl.resume import checkpoint_step, end_process_group, finished, main_process, resume_from
from rl.rollout import STEP_FACTS, Trajectory, run_episodes
from rl.sharding import StepMemory, check_autocast, full_weights, trains_in_bf16
from rl.toolcalls import get_format
from rl.trl_hooks import RolloutBatch, ToolGymGRPOTrainer, prompt_row, step_metrics, to_trl

log = logging.getLogger(__name__)

# vLLM's Gemma 4 model imports transformers' Gemma4Processor, whose image processor needs
# torchvision; PyPI's torchvision for torch 2.13 is a CUDA build that breaks beside the CPU torch
# (and the GPU image has no vLLM). Refuse before writing weights for an engine that cannot start.
VLM_BACKEND_ERROR = ("model {model!r} is a vision-language model; rollout.backend={backend!r} cannot take its "
                     "images yet (accepted for VLMs: hf). vLLM's Gemma 4 path needs torchvision built for this "
                     "torch and multi_modal_data prompts, which toolgym does not send yet")


def resolve_rewards(cfg: RunConfig) -> tuple[list, list[float]]:
    """Reward functions and their weights, in config order."""
    return named_rewards(list(cfg.rewards), cfg.grpo.nonfinite_rewards), [float(w) for w in cfg.rewards.values()]


def run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name


class EpisodeRollouts:
    """The `rollout_func`: plays the batch's episodes and shapes them for TRL."""

    def __init__(self, cfg: RunConfig, chat, env_cls, log_dir: Path | None = None):
        self.cfg = cfg
        self.chat = chat
        self.env_cls = env_cls
        self.env_pool: list = []
        self.backend = None
        self.engine_awake = False  # woken by sync_backend, for a sleep-mode engine to sleep again after the batch
        self.log_dir = log_dir
        self.rows: list[dict] = []  # dataset rows of the batch being generated (set by the trainer)
        self.batch: RolloutBatch | None = None  # the last batch's episodes, for the trainer's hooks
        self.env_kwargs: dict | None = None
        self.progress = None  # called as each episode of a batch ends (the run's progress bar)
        self.probe_ids: list[int] = []  # the last batch's first episode: what a weight push is checked on
        self.sync_check: dict[str, float] = {}
        self.remote_seen = remote_stats()  # server counters are per process; report this run's, per step

    def env_kwargs_for(self, trainer) -> dict:
        if self.env_kwargs is None:  # under data parallelism each process drives servers of its own
            self.env_kwargs = dict(self.cfg.env.kwargs)
            if "urls" in self.env_kwargs:
                acc = trainer.accelerator
                self.env_kwargs["urls"] = urls_for_rank(self.env_kwargs["urls"], acc.process_index, acc.num_processes)
        return self.env_kwargs

    def envs_for(self, n: int, trainer) -> list:
        while len(self.env_pool) < n:
            self.env_pool.append(self.env_cls(**self.env_kwargs_for(trainer)))
        return self.env_pool[:n]

    def __call__(self, prompts: list, trainer) -> dict[str, list]:
        seeds = [int(row["seed"]) for row in self.rows]
        if len(seeds) != len(prompts):
            raise RuntimeError(f"rollout got {len(prompts)} prompts but {len(seeds)} dataset rows")
        timing: dict[str, float] = {}
        started = time.perf_counter()
        with self.synced_backend(trainer) as backend:
            if self.progress is not None:
                self.progress(0, len(seeds), 0)  # the batch starts
            envs = self.envs_for(len(seeds), trainer)
            try:
                trajectories = run_episodes(envs, seeds, backend, self.chat, self.cfg.rollout, metrics=timing,
                                            progress=self.progress)
            except BaseException as error:
                # which envs crashed went with the batch, and any of them may still be mid-step in an env thread
                # it left running, or hold a server it never gave back: closed, and the next batch gets new ones
                del self.env_pool[:len(envs)]
                close_envs(envs, error)
                raise
        elapsed = time.perf_counter() - started
        replaced = []
        for i, t in enumerate(trajectories):
            if t.info["env_error"]:  # a crashed or hung env may still be mid-step in its thread: replace it
                replaced.append(self.env_pool[i])
                self.env_pool[i] = self.env_cls(**self.env_kwargs)
        close_replaced(replaced)
        self._log_metrics(trainer, trajectories, timing, elapsed)
        check = self.cfg.rollout.vllm.sync_check_tokens
        if check and trajectories:
            self.probe_ids = (trajectories[0].prompt_ids + trajectories[0].completion_ids)[:check]
        out = to_trl(trajectories, fallback_id=trainer.processing_class.eos_token_id)
        self.batch = RolloutBatch(trajectories, out["env_mask"])
        return out

    @contextmanager
    def synced_backend(self, trainer):
        """The generation backend on the trainer's current weights, for one batch of episodes (training's or
        the held-out eval's). Sharded runs gather the weights once; a vLLM engine holds its own copy, so the
        gathered one goes before it generates; the engine sleeps again after (sleep mode), also when the weight
        push or the batch raised, so the optimizer step that follows gets its memory back. An engine whose wake-up
        raised is left as it is (its error is the one raised), and the next batch wakes it again."""
        with ExitStack() as gathered:
            model = gathered.enter_context(full_weights(trainer))
            try:
                backend = self.sync_backend(model, trainer)
                if backend.name != "hf":
                    gathered.close()
                yield backend
            finally:
                if self.engine_awake:  # woken by sync_backend
                    self.engine_awake = False
                    self.backend.sleep()

    def sync_backend(self, model, trainer):
        """The generation backend, holding the trainer's current weights (version = global step)."""
        step = trainer.state.global_step
        if self.backend is None:
            self.backend = make_backend(self.cfg, model, trainer.processing_class, step)
        if hasattr(self.backend, "wake_up"):
            self.wake_up()
        if self.cfg.rollout.backend == "vllm-server":  # one process pushes to the shared servers
            if trainer.accelerator.is_main_process:
                self.backend.update_weights(model, version=step)
            trainer.accelerator.wait_for_everyone()
        else:
            from rl.vllm_weights import push_checked

            self.sync_check = push_checked(self.backend, model, step, self.probe_ids) or self.sync_check
        return self.backend

    def wake_up(self) -> None:
        """Wake the engine (sleep mode: it gave its memory to the optimizer step). One whose wake-up raised may be
        half awake: it is not put to sleep again (that would act on memory the wake-up left in an unknown state,
        and an error from it would hide this one), and stays asleep for vLLM, whose next wake-up brings back what
        this one did not."""
        try:
            self.backend.wake_up()
        except Exception as error:
            error.add_note("the generation engine did not wake up from sleep mode; it was not put back to sleep, "
                           "and the next batch wakes it again")
            raise
        self.engine_awake = True

    def shutdown(self, end_group: bool = False) -> None:
        """End the run's generation engine (a colocated vLLM engine and the process group it set up; with
        `end_group`, also a launcher's group, which the engine joined)."""
        if hasattr(self.backend, "shutdown"):
            self.backend.shutdown(end_group=end_group)

    def _log_metrics(self, trainer, trajectories: list[Trajectory], timing: dict, elapsed: float) -> None:
        """Episode metrics averaged over every process's episodes; timings are this process's."""
        metrics = step_metrics(trainer)
        rows = [[float(t.info.get(k) or 0) for k in STEP_FACTS]
                + [float(bool(t.info.get("env_error"))), float(bool(t.info.get("generation_error")))]
                for t in trajectories]
        values = trainer.accelerator.gather(torch.tensor(rows, device=trainer.accelerator.device)).mean(0).tolist()
        for key, value in zip((*STEP_FACTS, "crashed", "generation_failed"), values):
            metrics[f"env/{key}"].append(value)
        metrics["rollout/tokens_per_s"].append(timing.get("generated_tokens", 0) / max(elapsed, 1e-9))
        metrics["rollout/generation_s"].append(timing.get("generation_s", 0.0))
        metrics["rollout/env_s"].append(timing.get("env_s", 0.0))
        metrics["rollout/wall_s"].append(elapsed)
        if "engine_steps" in timing:  # the engine's steps, where they run in this process (rl/engine_clock.py)
            metrics["rollout/engine_steps"].append(timing["engine_steps"])
            metrics["rollout/engine_busy_s"].append(timing["engine_busy_s"])
        sync = getattr(self.backend, "last_sync", None)
        if sync:
            metrics["rollout/weight_sync_s"].append(sync["seconds"])
        for key, value in self.sync_check.items():  # max, mean; stale_max, stale_mean: before the push
            metrics[f"rollout/sync_logprob_diff_{key}"].append(value)
        if issubclass(self.env_cls, RemoteEnv):  # the same on every process, so all of them gather
            stats = remote_stats()  # this step's server episodes, failures, retries, queueing; all processes
            step = [stats[k] - self.remote_seen.get(k, 0.0) for k in stats]
            self.remote_seen = stats
            totals = trainer.accelerator.gather(torch.tensor([step], device=trainer.accelerator.device)).sum(0)
            for key, value in zip(stats, totals.tolist()):
                metrics[f"remote/{key}"].append(value)

    def log_samples(self, trainer, output: dict, episode_advantages: torch.Tensor) -> None:
        """Append the batch's first `log.sample_episodes` episodes to episodes.jsonl, once scored (called by
        the trainer's hook: rewards and advantages exist only after the rollout returns)."""
        log = self.cfg.log
        if self.log_dir is None or not trainer.accelerator.is_main_process or not log.sample_episodes:
            return
        n = min(log.sample_episodes, len(self.batch.trajectories))
        advantages = output["advantages"][:n]
        trained = output["completion_mask"][:n]
        if "tool_mask" in output:
            trained = trained * output["tool_mask"][:n]
        scores = Scores(names=list(trainer.reward_func_names),
                        per_func=trainer._rewards_per_func[:n].tolist(),  # gathered; process 0's rows first
                        rewards=trainer._episode_rewards[:n].tolist(),
                        advantages=episode_advantages[:n].tolist(),
                        token_advantages=advantages.tolist() if advantages.dim() == 2 else None,
                        trained=trained.tolist())
        seeds = [int(row["seed"]) for row in self.rows[:n]]
        rows = sample_rows(trainer.state.global_step, self.batch.trajectories, seeds, self.chat, scores, n,
                           log.token_episodes)
        with open(self.log_dir / "episodes.jsonl", "a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)


def close_replaced(envs: list) -> None:
    """Close the envs a batch crashed (a remote one's server session, a sandboxed one's worker), each once no
    thread steps it any more (`close_envs`). A close() that raises is logged: the run goes on with new envs."""
    try:
        close_envs(envs)
    except Exception:  # logged, not raised: the trainer must not stop for an env it no longer uses
        log.warning("closing an env the rollout replaced failed; the run goes on", exc_info=True)


def make_backend(cfg: RunConfig, model, tokenizer, step: int):
    """The configured generation backend (`rollout.backend`); a vLLM engine starts on `model`'s
    current weights (LoRA merged), written once to the run directory."""
    kind, v = cfg.rollout.backend, cfg.rollout.vllm
    if kind == "hf":
        return TransformersBackend(model, tokenizer, autocast=cfg.model.autocast)
    if kind == "vllm":
        from rl.vllm_backend import VLLMBackend

        rank = int(os.environ.get("RANK", "0"))  # global: ranks of several machines may share one disk
        return VLLMBackend.from_settings(model, tokenizer, run_dir(cfg) / f"vllm-start-rank{rank}", v,
                                         seed=cfg.grpo.seed + rank, weights_version=step,
                                         enable_sleep_mode=v.enable_sleep_mode)
    from rl.vllm_server_backend import VLLMServerBackend

    backend = VLLMServerBackend(v.urls, timeout_s=v.timeout_s, retries=v.retries, sync_dir=run_dir(cfg) / "weight-sync")
    backend.wait_ready(timeout_s=v.timeout_s)
    return backend


def _report_to(cfg: RunConfig) -> list[str]:
    mode = cfg.log.wandb
    if mode == "off":
        return []
    if mode == "auto":
        netrc = Path.home() / ".netrc"
        logged_in = bool(os.environ.get("WANDB_API_KEY")) or (netrc.exists() and "api.wandb.ai" in netrc.read_text())
        mode = "online" if logged_in else "offline"
    os.environ.setdefault("WANDB_MODE", mode)
    os.environ.setdefault("WANDB_PROJECT", cfg.log.project)
    os.environ.setdefault("WANDB_DIR", str(run_dir(cfg)))
    if cfg.log.group:
        os.environ.setdefault("WANDB_RUN_GROUP", cfg.log.group)
    if cfg.log.tags:
        os.environ.setdefault("WANDB_TAGS", ",".join(cfg.log.tags))
    return ["wandb"]


def grpo_args(cfg: RunConfig, model, reward_weights: list[float]) -> GRPOConfig:
    """TRL's `GRPOConfig` for the run: toolgym's typed keys, then any other GRPOConfig field (`grpo.*`)."""
    g, on_gpu = cfg.grpo, torch.cuda.is_available()
    args = GRPOConfig(
        output_dir=str(run_dir(cfg)), run_name=cfg.name, max_steps=g.max_steps, learning_rate=g.learning_rate,
        per_device_train_batch_size=g.per_device_train_batch_size,
        gradient_accumulation_steps=g.gradient_accumulation_steps, num_generations=g.num_generations,
        loss_type=g.loss_type, beta=g.beta, epsilon=g.epsilon, epsilon_high=g.epsilon_high or None,
        scale_rewards=g.scale_rewards, mask_truncated_completions=g.mask_truncated_completions,
        num_iterations=g.num_iterations,
        gradient_checkpointing=g.gradient_checkpointing, logging_steps=g.logging_steps, save_steps=g.save_steps,
        save_total_limit=g.save_total_limit, seed=g.seed, warmup_steps=g.warmup_steps,
        lr_scheduler_type=g.lr_scheduler_type, max_grad_norm=g.max_grad_norm,
        max_completion_length=cfg.rollout.max_completion_tokens, temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, reward_weights=reward_weights,
        report_to=_report_to(cfg), use_cpu=not on_gpu, bf16=trains_in_bf16(cfg.model.autocast, model),
        chat_template_kwargs=cfg.rollout.chat_template_kwargs, disable_tqdm=False, **g.trl_args,
    )
    check_autocast(cfg.model.autocast, args)
    return args


def build_trainer(cfg: RunConfig):
    """Everything TRL needs, validated in cheap-first order: env and rewards before the model."""
    check_resolvable(cfg)  # env, env kwargs and reward paths, before the model loads
    apply_run_environment(cfg)
    trl_contract.check()  # the TRL private names the subclass below overrides
    env_cls = envs_registry.resolve(cfg.env.name)
    reward_funcs, reward_weights = resolve_rewards(cfg)
    tool_format = get_format(cfg.model.tool_format)
    out = run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    if main_process():
        (out / "config.yaml").write_text(to_yaml(cfg))

    tokenizer = load_tokenizer(cfg.model)
    chat = ChatFormat(tokenizer, tool_format, cfg.rollout.chat_template_kwargs,
                      images=load_image_tokenizer(cfg.model, tokenizer))
    if chat.images is not None and cfg.rollout.backend != "hf":
        raise ConfigError(VLM_BACKEND_ERROR.format(model=cfg.model.name, backend=cfg.rollout.backend))
    if not issubclass(env_cls, RemoteEnv):  # remote episodes would take servers from the run
        for warning in check_rewards(cfg, chat, reward_funcs):
            if main_process():  # every process checks; one says so
                print(f"[toolgym] warning: {warning}", file=sys.stderr, flush=True)
    model, tokenizer = load_model(cfg.model, tokenizer)
    rollouts = EpisodeRollouts(cfg, chat, env_cls, log_dir=out)

    start, stop = cfg.env.train_seeds
    seeds = list(range(start, stop))
    dataset = Dataset.from_dict({"prompt": [prompt_row(cfg.env.name, s) for s in seeds], "seed": seeds})

    args = grpo_args(cfg, model, reward_weights)
    g = cfg.grpo
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is the point of this module
    trainer = ToolGymGRPOTrainer(
        model=model, processing_class=tokenizer, reward_funcs=reward_funcs, args=args, train_dataset=dataset,
        rollout_func=rollouts, peft_config=lora_config(cfg.lora, model),
    )
    save_adapters_offline(trainer.model)
    trainer.image_token_id = chat.images.image_token_id if chat.images else None
    trainer.step_advantage_weight = g.step_advantage_weight
    trainer.score_only_model_tokens = g.score_only_model_tokens
    trainer.group_micro_batches(g.micro_batches, grouping_changes_gradient(g))
    rollouts.progress = RunProgress.install(trainer).generating
    trainer.add_callback(SkipNonFiniteUpdates(trainer))
    trainer.add_callback(JsonlLogger(out / "metrics.jsonl"))
    if args.report_to and "wandb" in args.report_to:
        trainer.add_callback(WandbRunConfig(cfg))
    if g.time_limit_s:
        trainer.add_callback(TimeLimit(g.time_limit_s))
    trainer.add_callback(StepMemory(trainer))
    if cfg.eval.every_steps:
        trainer.add_callback(HeldOutEval(trainer, rollouts))
    return trainer


def train(cfg: RunConfig, resume: bool = False, end_group: bool = False) -> Path:
    """Run GRPO; returns the run directory (metrics.jsonl, episodes.jsonl, checkpoints, final/). `end_group`: the
    process ends after the run (`launch/grpo.py`), so a launcher's torch.distributed group is ended with it."""
    out = run_dir(cfg)
    done = finished(out, cfg.grpo.max_steps) if resume else None
    if done:  # TRL would train one step past max_steps and overwrite final/
        if main_process():
            print(done, flush=True)
        return out
    checkpoint = resume_from(out, resume)
    start = checkpoint_step(checkpoint) if checkpoint else 0
    trainer = build_trainer(cfg)
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        if trainer.state.global_step > start:  # final/ is only ever replaced by a model that trained further
            trainer.save_model(str(out / "final"))  # every process: ZeRO-3 and FSDP gather the weights to save
            if trainer.accelerator.is_main_process:
                trainer.processing_class.save_pretrained(str(out / "final"))
        if trainer.accelerator.is_main_process:
            save_curve(out)
        if "wandb" in (trainer.args.report_to or []) and trainer.accelerator.is_main_process:
            import wandb

            wandb.finish()  # the run's files complete; a next run in this process (a sweep) gets its own
    finally:
        trainer.rollout_func.shutdown(end_group)  # also when the run raised
        if end_group:
            end_process_group()
    return out
