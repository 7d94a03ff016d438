"""Expert demonstrations for SFT: the expert's episodes on training seeds, in the exact token layout of
a rollout, with loss only on the expert's tokens."""

from __future__ import annotations

import dataclasses
import json

from rl.config import RunConfig
from rl.evaluation import chat_for, make_policy, play


def demonstrations(cfg: RunConfig, tokenizer, num_episodes: int | None = None):
    """Expert episodes on training seeds, as a `datasets.Dataset` ready for SFT.

    Columns: `input_ids` (prompt + completion), `completion_mask` (1 on the expert's
    tokens only, so tool results carry no loss), `seed`, `text`, `info` (JSON); for a
    vision-language model also `frames`, the images its image tokens stand for, in order.
    """
    from datasets import Dataset

    from rl.models import load_image_tokenizer
    from rl.vision import FRAME_KEY

    n = num_episodes or cfg.sft.num_episodes
    start, stop = cfg.env.train_seeds
    if n > stop - start:
        raise ValueError(f"sft.num_episodes={n} exceeds the training seed range {cfg.env.train_seeds}")
    seeds = list(range(start, start + n))
    images = load_image_tokenizer(cfg.model, tokenizer)
    if images is not None:
        images.keep_frames = True
    chat = chat_for(cfg, tokenizer, images)
    expert = make_policy(cfg, "expert", seed=cfg.sft.seed, explore=cfg.sft.explore, **cfg.sft.expert)
    # the demonstration writes whole calls itself: no response prefix
    settings = dataclasses.replace(cfg.rollout, response_prefix="")
    trajectories = play(cfg, chat, seeds, policy=expert, settings=settings, batch_size=64)
    rows = {"input_ids": [], "completion_mask": [], "seed": [], "text": [], "info": []}
    if images is not None:
        rows["frames"] = []
    for seed, t in zip(seeds, trajectories):
        rows["input_ids"].append(t.prompt_ids + t.completion_ids)
        rows["completion_mask"].append([0] * len(t.prompt_ids) + t.env_mask)
        rows["seed"].append(seed)
        rows["text"].append(chat.decode(t.prompt_ids + t.completion_ids))
        rows["info"].append(json.dumps(t.info))
        if images is not None:
            # copies carry no source format, so the dataset stores them losslessly (PNG), not re-encoded as JPEG
            rows["frames"].append([image[FRAME_KEY].copy() for image in t.images])
    return Dataset.from_dict(rows)
