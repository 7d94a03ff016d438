"""Trajectories in the shape TRL's rollout_func returns, and the episode rewards kept from TRL's scores."""

import math
from types import SimpleNamespace

import pytest

from rl.config import ConfigError, load_config
from rl.config_checks import grouping_changes_gradient
from rl.rollout import Trajectory
from rl.trl_hooks import (
    LengthGroupedMicroBatchesMixin,
    ModelTokenScoringMixin,
    regroup_by_length,
    to_trl,
    weighted_rewards,
)


def traj(completion, mask, **info):
    return Trajectory([1, 2], completion, [-0.5] * len(completion), mask,
                      {"env_error": "", "generation_error": "", **info})


def test_columns_and_episode_facts():
    out = to_trl([traj([5, 6, 7], [1, 0, 1], solved=True), traj([8], [1], solved=False)], fallback_id=0)
    assert out["completion_ids"] == [[5, 6, 7], [8]] and out["env_mask"] == [[1, 0, 1], [1]]
    assert out["solved"] == [True, False] and out["prompt_ids"] == [[1, 2], [1, 2]]


def test_failed_generation_carries_no_loss_and_empty_episodes_keep_valid_shapes():
    failed = traj([5, 6], [1, 1], generation_error="vLLM server http://x: gave up")
    empty = Trajectory([], [], [], [], {"env_error": "boom", "generation_error": ""})
    out = to_trl([failed, empty], fallback_id=9)
    assert out["env_mask"] == [[0, 0], [0]] and out["completion_ids"][1] == [9] and out["prompt_ids"][1] == [9]


def test_an_episodes_reward_leaves_out_functions_that_returned_none_and_is_nan_when_all_did():
    import torch

    nan = float("nan")
    per_func = torch.tensor([[0.0, 1.0], [1.0, nan], [nan, nan]])
    rewards = weighted_rewards(per_func, torch.tensor([1.0, 0.5])).tolist()
    assert rewards[:2] == [0.5, 1.0] and math.isnan(rewards[2])


def test_micro_batches_regrouped_by_length_keep_every_row_whole_and_put_similar_lengths_together():
    import torch

    lengths = [1, 6, 2, 5, 3, 4]  # as TRL's shuffled split left them: 3 micro-batches of 2 rows
    width = max(lengths)
    mask = torch.tensor([[1] * n + [0] * (width - n) for n in lengths])
    rows = {"completion_mask": mask, "completion_ids": mask * torch.arange(6).unsqueeze(1),  # row i's ids are i
            "advantages": torch.arange(6.0), "solved": [f"row{i}" for i in range(6)],
            "num_items_in_batch": torch.tensor(21), "ref_per_token_logps": None}
    chunks = [{k: (v if v is None or isinstance(v, torch.Tensor) and v.ndim == 0 else v[i:i + 2])
               for k, v in rows.items()} for i in (0, 2, 4)]
    regrouped = regroup_by_length(chunks)
    assert len(regrouped) == 3
    assert [c["completion_mask"].sum(1).tolist() for c in regrouped] == [[6, 5], [4, 3], [2, 1]]
    for chunk in regrouped:  # each row moved whole: its ids, advantage and list entries together
        ids = chunk["completion_ids"].max(dim=1).values.tolist()
        assert chunk["advantages"].tolist() == ids and chunk["solved"] == [f"row{i}" for i in ids]
        assert int(chunk["num_items_in_batch"]) == 21 and chunk["ref_per_token_logps"] is None
    # the padded positions the loss passes compute: each micro-batch runs up to its longest completion
    assert sum(2 * max(c["completion_mask"].sum(1).tolist()) for c in regrouped) == 24
    assert sum(2 * max(c["completion_mask"].sum(1).tolist()) for c in chunks) == 30
    with pytest.raises(RuntimeError, match="column 'extra' has 3 rows, not 6"):
        regroup_by_length([{**c, "extra": [0]} for c in chunks])


class _Trainer(LengthGroupedMicroBatchesMixin, ModelTokenScoringMixin):
    def __init__(self, steps_per_generation=4, image_token_id=None, aux_loss_enabled=False, score=True):
        self.args = SimpleNamespace(steps_per_generation=steps_per_generation, gradient_accumulation_steps=4)
        self.image_token_id, self.aux_loss_enabled = image_token_id, aux_loss_enabled
        self.score_only_model_tokens = score


@pytest.mark.parametrize(("overrides", "trainer", "grouped"), [
    ([], {}, True),  # auto, dapo: the summed gradient is the same
    (["grpo.loss_type=grpo"], {"steps_per_generation": 8}, True),  # each optimizer step's micro-batches alone
    (["grpo.loss_type=bnpo"], {}, False),  # auto falls back to TRL's split where grouping would change the update
    (["grpo.entropy_coef=0.01"], {}, False),
    (["grpo.use_adaptive_entropy=true"], {}, False),
    ([], {"steps_per_generation": 6}, False),  # a generation batch's steps would not each be whole
    ([], {"image_token_id": 5}, False),  # a VLM's image columns are split by image
    ([], {"aux_loss_enabled": True}, False),  # an MoE router's loss over each micro-batch
    ([], {"score": False}, False),  # TRL's own scoring pads every pass to the batch's longest: nothing to save
    (["grpo.micro_batches=shuffled"], {}, False),
    (["grpo.micro_batches=by_length", "grpo.score_only_model_tokens=false"], {"score": False}, True),
])
def test_which_runs_group_micro_batches_by_length(overrides, trainer, grouped):
    g = load_config(None, overrides).grpo
    t = _Trainer(**trainer)
    t.group_micro_batches(g.micro_batches, grouping_changes_gradient(g))
    assert t.micro_batches_by_length is grouped


@pytest.mark.parametrize(("trainer", "message"), [
    ({"image_token_id": 5}, "vision-language model's image inputs are split by image"),
    ({"aux_loss_enabled": True}, r"router \(MoE\) auxiliary loss is computed over each micro-batch"),
    ({"steps_per_generation": 6}, r"steps_per_generation \(6\) is no multiple of grpo.gradient_accumulation_steps"),
])
def test_micro_batches_by_length_is_refused_where_the_trainer_knows_it_would_change_the_update(trainer, message):
    with pytest.raises(ConfigError, match="grpo.micro_batches=by_length: .*" + message):
        _Trainer(**trainer).group_micro_batches("by_length", None)
