"""The one seam with TRL: the GRPOTrainer subclass, every override of a TRL private method, and the two
other private touches (`step_metrics`: TRL's per-step metrics dict; `compact_lm_head`: a patch of
`trl.trainer.utils._use_triton`).

toolgym owns the episodes (`rl.rollout`: envs, multi-turn generation, tool calls, `env_mask`), the scoring
of the model's own tokens (`rl.logprobs`), step-level credit (`rl.credit`) and a VLM's images
(`rl.vision`); TRL owns the advantages, the loss, the optimizer step and logging. TRL 1.16 has no public
hook for what toolgym hands over, so the classes below override private methods, each marked with why and
with the upstream change that would remove it. `rl/trl_contract.py` checks, before every run, that every
private name used here exists in the installed TRL with the parameters relied on.

The rollout (`rl.trainer.EpisodeRollouts`, TRL's `rollout_func`) takes the batch's dataset rows
(`rollout_func.rows`, set here: TRL passes it only their prompts), returns TRL's dict (ids, logprobs,
`env_mask`, episode facts as columns) and leaves one `RolloutBatch` (`rollout_func.batch`): what the hooks
below read back for the same rows and TRL's dict cannot carry (images, turn spans, the model's messages).
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import trl.trainer.utils as trl_utils
from accelerate.utils import gather_object
from trl import GRPOTrainer

from rl.config import ConfigError
from rl.credit import step_advantages
from rl.logprobs import SCORE_MASK, pad_masks, score_tokens
from rl.rollout import Trajectory
from rl.vision import IMAGE_INPUT_KEYS, batch_image_inputs


def prompt_row(env_name: str, seed: int) -> list[dict]:
    """A dataset row's prompt: conversational, as TRL's own rewards expect. It only names the episode; reward
    functions get the episode's real prompt (`RolloutBatch.prompts`), which the rollout renders."""
    return [{"role": "user", "content": f"{env_name} seed {seed}"}]


def model_messages(texts: list[list[str]]) -> list[list[dict]]:
    """`completions` as reward functions get them: per episode, one assistant message per model turn (its
    tool calls included, never the env's replies); an episode the model never spoke in gets one empty one."""
    return [[{"role": "assistant", "content": text} for text in turns] or [{"role": "assistant", "content": ""}]
            for turns in texts]


def to_trl(trajectories: list[Trajectory], fallback_id: int) -> dict[str, list]:
    """The dict TRL's `rollout_func` returns: ids, logprobs, `env_mask`, plus episode facts as columns."""
    out: dict[str, list] = defaultdict(list)
    keys = sorted({k for t in trajectories for k in t.info})
    for t in trajectories:
        completion, logprobs, mask = t.completion_ids, t.logprobs, t.env_mask
        if not completion:  # the env failed before the model spoke: one masked token keeps shapes valid
            completion, logprobs, mask = [fallback_id], [0.0], [0]
        if t.info.get("generation_error"):  # the generator failed this episode: nothing in it to learn from
            mask = [0] * len(mask)
        out["prompt_ids"].append(t.prompt_ids or [fallback_id])
        out["completion_ids"].append(completion)
        out["logprobs"].append(logprobs)
        out["env_mask"].append(mask)
        for k in keys:
            out[k].append(t.info.get(k))
    return dict(out)


def weighted_rewards(per_func: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(episodes, functions) rewards -> each episode's reward: the weighted sum of its functions' values, a
    function that returned None (NaN) left out; NaN where every function did (as TRL sums them).

    This is the reward TRL logs under either `multi_objective_aggregation` (TRL 1.16 sums the weighted values
    for its `reward` metric after computing the advantages either way), so episodes.jsonl matches the logged
    mean; step-level advantages compare these sums too, also where `normalize_then_sum` gave the episodes'."""
    rewards = (per_func * weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
    rewards[torch.isnan(per_func).all(dim=1)] = torch.nan
    return rewards


def step_metrics(trainer, mode: str | None = None) -> dict[str, list]:
    """TRL's metrics of the step being logged ({key: values}, averaged at the next log), where toolgym adds
    its episode, rollout, guard and held-out metrics. `mode` defaults to the model's (train/eval).
    TRL private (`GRPOTrainer._metrics`). Upstream fix: a public way to add metrics to a step's log."""
    return trainer._metrics[mode or ("train" if trainer.model.training else "eval")]


@contextmanager
def compact_lm_head(device: torch.device):
    """On a CPU, TRL's fused head projects every position (`compact` only on Triton devices, where
    tile shapes may change with each batch). Eager PyTorch recompiles nothing, so there too it
    projects only the labelled positions (`rl.logprobs`, SFT).

    TRL private: patches `trl.trainer.utils._use_triton`, which the fused head looks up in that module
    at each call. Upstream fix: compacting to labelled positions on every device."""
    if device.type != "cpu":
        yield
        return
    saved = trl_utils._use_triton
    trl_utils._use_triton = lambda _device: True
    try:
        yield
    finally:
        trl_utils._use_triton = saved


@dataclass
class RolloutBatch:
    """One rollout's episodes, in row order, as the hooks read them back for the same batch."""

    trajectories: list[Trajectory]
    env_masks: list[list[int]]  # as returned to TRL: which tokens the loss passes score (rl/logprobs.py)

    @property
    def images(self) -> list[list]:  # each episode's processed images (VLMs)
        return [t.images for t in self.trajectories]

    @property
    def turns(self) -> list[list]:  # each episode's turns (token spans, state digests): step-level advantages
        return [t.turns for t in self.trajectories]

    @property
    def completions(self) -> list[list[dict]]:  # the model's own messages: reward functions' `completions`
        return model_messages([t.texts for t in self.trajectories])

    @property
    def prompts(self) -> list[list[dict]]:  # the system prompt and the env's first observation: `prompts`
        return [t.prompt or [{"role": "user", "content": ""}] for t in self.trajectories]


class VisionGRPOMixin:
    """Gives a `GRPOTrainer` with a `rollout_func` the images of its episodes in every forward pass.

    The rollout leaves the batch's processed images in its `RolloutBatch` (one list per row,
    in row order). Scoring passes at generation time (old/reference logprobs) read them there;
    the batch returned for training carries them as `pixel_values`, `image_position_ids` and
    `num_images`, which TRL shuffles and splits with the rows and hands back to
    `_get_per_token_logps_and_entropies`, where each chunk of rows gets its own images.
    """

    image_token_id: int | None = None
    _generating = False

    # TRL private: adds the episodes' image inputs to the batch TRL trains on.
    # Upstream fix: image inputs carried for rollout_func batches.
    def _generate_and_score_completions(self, inputs):
        self.rollout_func.batch = None
        self._generating = True
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._generating = False
        rows = self.rollout_func.batch.images if self.rollout_func.batch is not None else None
        if rows and any(rows):
            images = [image for row in rows for image in row]
            for key in IMAGE_INPUT_KEYS:
                output[key] = torch.stack([image[key] for image in images]).to(output["prompt_ids"].device)
            output["num_images"] = [len(row) for row in rows]
        return output

    # TRL private: gives a VLM its images in every forward pass, chunk by chunk.
    # Upstream fix: the same image inputs carried into TRL's scoring passes.
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **kwargs):
        rows = self._image_rows(input_ids.size(0), kwargs)
        if rows is None:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **kwargs)
        step = batch_size or input_ids.size(0)
        logps, entropies, aux = [], [], []
        for start in range(0, input_ids.size(0), step):
            chunk = slice(start, start + step)
            images = batch_image_inputs(rows[chunk], input_ids[chunk], self.image_token_id)
            if images:
                images["num_images"] = [len(row) for row in rows[chunk]]
            out = super()._get_per_token_logps_and_entropies(
                model, input_ids[chunk], attention_mask[chunk], logits_to_keep, compute_entropy=compute_entropy,
                compute_aux_loss=compute_aux_loss, **images)
            logps.append(out[0])
            entropies.append(out[1])
            aux.append(out[2])
        return (torch.cat(logps), torch.cat(entropies) if compute_entropy else None,
                torch.stack(aux).mean() if compute_aux_loss else None)

    def _image_rows(self, n: int, kwargs: dict) -> list[list[dict]] | None:
        """Each row's images: from the training batch's columns, else from the rollout just played."""
        pixel_values, num_images = kwargs.get("pixel_values"), kwargs.get("num_images")
        if pixel_values is not None and num_images is not None:
            columns = {k: kwargs[k].split(num_images) for k in IMAGE_INPUT_KEYS}
            return [[{k: columns[k][row][i] for k in IMAGE_INPUT_KEYS} for i in range(count)]
                    for row, count in enumerate(num_images)]
        batch = getattr(self.rollout_func, "batch", None)
        rows = batch.images if self._generating and batch is not None else None
        if rows and any(rows):
            if len(rows) != n:
                raise RuntimeError(f"the rollout returned images for {len(rows)} rows but the batch has {n}")
            return rows
        return None


class ModelTokenScoringMixin:
    """Gives a `GRPOTrainer` with a `rollout_func` model-token-only scoring (`score_tokens`).

    The rollout leaves its rows' `env_mask` in its `RolloutBatch`. Scoring passes during
    generation read them there; the batch returned for training carries them as `score_mask`,
    which TRL shuffles and splits with the rows, and the loss pass reads it from its inputs.
    Vision-language models (a trainer with an `image_token_id`; rl/vision.py) and MoE models
    trained with their auxiliary loss keep TRL's scoring, in every pass alike.
    """

    score_only_model_tokens = True
    _loss_score_mask: torch.Tensor | None = None

    # TRL private: adds the model-token score mask to the batch TRL trains on.
    # Upstream fix: a rollout_func that may return extra per-token training columns.
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self._scores_model_tokens():
            ids = output["completion_ids"]
            output[SCORE_MASK] = pad_masks(self._rollout_masks(ids.size(0)), ids.size(1), ids.device)
        return output

    # TRL private: lets the loss pass read the batch's score mask.
    # Upstream fix: a label/score mask column that TRL's loss pass forwards to the LM head.
    def _compute_loss(self, model, inputs):
        self._loss_score_mask = inputs.get(SCORE_MASK)
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._loss_score_mask = None

    # TRL private: projects only the model's tokens through the LM head.
    # Upstream fix: the same score mask column honoured by TRL's own scoring.
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **kwargs):
        if not self._scores_model_tokens() or any(v is not None for v in kwargs.values()):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **kwargs)
        mask = self._loss_score_mask
        if mask is None:  # a pass at generation time: the rollout just played these rows
            mask = pad_masks(self._rollout_masks(input_ids.size(0)), logits_to_keep, input_ids.device)
        logps, entropies = score_tokens(model, input_ids, attention_mask, logits_to_keep, mask, batch_size,
                                        compute_entropy, autocast=self.accelerator.autocast)
        return logps, entropies, None

    def _scores_model_tokens(self) -> bool:
        return (self.score_only_model_tokens and getattr(self, "image_token_id", None) is None
                and not getattr(self, "aux_loss_enabled", False))

    def _rollout_masks(self, rows: int) -> list[list[int]]:
        batch = getattr(self.rollout_func, "batch", None)
        masks = batch.env_masks if batch is not None else None
        if masks is None or len(masks) != rows:
            raise RuntimeError(f"the rollout left env masks for {None if masks is None else len(masks)} rows "
                               f"but the batch has {rows}")
        return masks


def regroup_by_length(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """TRL's micro-batches of one generation batch, re-split so each holds episodes of similar completion length,
    longest first (a run that does not fit memory fails at its first pass). Every value is split as TRL splits
    it: tensors and lists by row, 0-dim tensors (the batch's token count) kept whole."""
    from trl.trainer.utils import split_tensor_dict

    first = chunks[0]
    if "num_images" in first:  # image columns are split by image, not by row
        raise RuntimeError("regroup_by_length: a batch with image inputs keeps TRL's split")
    whole = {key for key, value in first.items()  # kept as they are: None, and 0-dim tensors
             if value is None or isinstance(value, torch.Tensor) and value.ndim == 0}
    merged: dict[str, Any] = {}
    for key, value in first.items():
        if key in whole:
            merged[key] = value
        elif isinstance(value, torch.Tensor):
            merged[key] = torch.cat([chunk[key] for chunk in chunks])
        else:
            merged[key] = [row for chunk in chunks for row in chunk[key]]
    rows = merged["completion_mask"].size(0)
    order = torch.argsort(merged["completion_mask"].sum(dim=1), descending=True, stable=True)
    index = order.tolist()
    for key, value in merged.items():
        if key in whole:
            continue
        if len(value) != rows:
            raise RuntimeError(f"the generation batch's column {key!r} has {len(value)} rows, not {rows}: "
                               "cannot regroup its micro-batches (grpo.micro_batches=shuffled keeps TRL's)")
        merged[key] = value[order.to(value.device)] if isinstance(value, torch.Tensor) else [value[i] for i in index]
    return split_tensor_dict(merged, len(chunks))


class LengthGroupedMicroBatchesMixin:
    """Puts episodes of similar length in the same micro-batch (`grpo.micro_batches`).

    TRL shuffles a generation batch and splits it into micro-batches at random. Completions are padded to the
    longest of their micro-batch (`rl.logprobs.score_tokens` cuts the rest), so a random split pays for the long
    episodes in nearly every pass. Only the micro-batches of one optimizer step are regrouped among themselves (a
    generation batch may feed several steps: each keeps TRL's random share of it). Where the loss sums per-row
    terms, the step's gradient is the same whichever rows share a pass; `group_micro_batches` says where not."""

    micro_batches_by_length = False

    def group_micro_batches(self, setting: str, config_reason: str | None) -> None:
        """Decides `micro_batches_by_length` from `grpo.micro_batches` (auto, by_length, shuffled) and
        `rl.config_checks.grouping_changes_gradient`'s reason, if any, with what only the trainer knows."""
        reason = config_reason
        if getattr(self, "image_token_id", None) is not None:
            reason = "a vision-language model's image inputs are split by image, not by episode"
        elif getattr(self, "aux_loss_enabled", False):
            reason = "the model's router (MoE) auxiliary loss is computed over each micro-batch"
        elif self.args.steps_per_generation % self.args.gradient_accumulation_steps:
            reason = (f"grpo.steps_per_generation ({self.args.steps_per_generation}) is no multiple of "
                      f"grpo.gradient_accumulation_steps ({self.args.gradient_accumulation_steps})")
        if setting == "by_length" and reason:
            raise ConfigError(f"grpo.micro_batches=by_length: {reason}, so grouping episodes by length would change "
                              "the update (accepted here: auto or shuffled)")
        # auto: only where the passes are trimmed to their micro-batch's longest (TRL's own scoring is not)
        self.micro_batches_by_length = setting == "by_length" or (
            setting == "auto" and reason is None and self._scores_model_tokens())

    # TRL private: re-splits a fresh generation batch's buffered micro-batches by completion length.
    # Upstream fix: a way to choose how the generation batch is split into micro-batches.
    def _prepare_inputs(self, generation_batch):
        buffered = self._buffered_inputs
        inputs = super()._prepare_inputs(generation_batch)
        if self.micro_batches_by_length and self._buffered_inputs is not buffered and self.model.training:
            step = self.args.gradient_accumulation_steps  # one optimizer step's micro-batches
            chunks = self._buffered_inputs
            self._buffered_inputs = [chunk for start in range(0, len(chunks), step)
                                     for chunk in regroup_by_length(chunks[start:start + step])]
            inputs = self._buffered_inputs[self._step % self.args.steps_per_generation]
        return inputs


class ToolGymGRPOTrainer(LengthGroupedMicroBatchesMixin, VisionGRPOMixin, ModelTokenScoringMixin, GRPOTrainer):
    """GRPOTrainer that lets the rollout see the batch's dataset rows (for env seeds), gives a
    vision-language model its episodes' images in every forward pass (`rl.vision`), and projects
    only the model's tokens through the LM head (`rl.logprobs`)."""

    step_advantage_weight = 0.0

    # TRL private: hands the rollout the batch's dataset rows (env seeds), adds step-level advantages, logs
    # the scored sample episodes.
    # Upstream fix: a rollout_func that receives the dataset rows and may return per-token advantages.
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]):
        self.rollout_func.rows = inputs
        started = time.perf_counter()
        output = super()._generate_and_score_completions(inputs)
        episode_advantages = output["advantages"]
        if self.step_advantage_weight:
            output["advantages"] = self._add_step_advantages(output["advantages"], output["completion_ids"].shape[1])
        self.rollout_func.log_samples(self, output, episode_advantages)  # scored episodes to episodes.jsonl
        # the rollout (rollout/wall_s) and all that scores it: logprob passes, rewards, advantages, the log
        step_metrics(self)["time/generate_and_score_s"].append(time.perf_counter() - started)
        return output

    # TRL private: reward functions get the model's own messages; the gathered per-function rewards and
    # their weighted sums are kept for step-level advantages and the episode log. Upstream fix: rewards in
    # the output of _generate_and_score_completions, and completions built from the rollout's own messages.
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's rewards of every process's episodes (gathered), kept with each episode's weighted sum
        (`weighted_rewards`) for the step-level advantages and episodes.jsonl.

        Reward functions get the model's own messages as `completions`: one assistant message per model
        turn, its tool calls included, never the env's replies (TRL decodes the whole completion, tool
        results and all, so a text reward would score the env's output as the model's); and as `prompts`
        the messages each episode started from (TRL's are the dataset rows, which only name the episode)."""
        batch = self.rollout_func.batch
        if len(batch.trajectories) != len(completions):
            raise RuntimeError(f"the rollout played {len(batch.trajectories)} episodes but TRL scores "
                               f"{len(completions)} completions")
        prompts, completions = batch.prompts, batch.completions
        self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._episode_rewards = weighted_rewards(self._rewards_per_func, self.reward_weights)
        return self._rewards_per_func

    def _add_step_advantages(self, advantages: torch.Tensor, width: int) -> torch.Tensor:
        """(batch,) episode advantages -> (batch, width) per-token ones, each turn's tokens moved by
        `step_advantage_weight` x its step advantage (rl/credit.py). Groups may span processes, so
        every process computes them over the gathered batch and keeps its own rows."""
        turns = gather_object(self.rollout_func.batch.turns)
        steps, shared = step_advantages(self._episode_rewards.tolist(), turns, self.num_generations,
                                        self.scale_rewards != "none")
        first = self.accelerator.process_index * len(advantages)
        out = advantages.unsqueeze(1).repeat(1, width)
        moved = []
        for i in range(len(advantages)):
            for (start, end, _), step in zip(turns[first + i], steps[first + i]):
                out[i, start:end] += self.step_advantage_weight * step
                moved.append(abs(step))
        metrics = step_metrics(self)
        metrics["step_advantage/shared_state_turns"].append(shared)
        metrics["step_advantage/abs_mean"].append(sum(moved) / len(moved) if moved else 0.0)
        return out
