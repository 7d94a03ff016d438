"""What `episodes.jsonl` keeps of each sampled episode: enough to read an episode turn by turn, and to see
which of its tokens were trained and with what advantage (`launch/view.py` shows it).

Each row holds the step, the dataset seed, the decoded text (prompt and completion, as the model saw it), the
episode facts (`info`), each reward function's value and their weighted sum, the episode's group-relative
advantage, the starting messages, and per model turn its text, the tool calls parsed from it (or the parse
errors) and the env's reply, images as small JPEG data URLs. The first `log.token_episodes` rows of a step
also carry `tokens`: each completion token's text and runs of tokens alike in `env_mask`, in whether the loss
reads them and in advantage (one run per turn or env reply, so a token view costs about one short string per
token). Only `log.sample_episodes` episodes per step are written at all, so the file grows by a bounded amount
per step whatever the batch size.

`launch/eval.py` writes the same rows for the episodes it plays (`eval_rows`), with the sample index and
without what only training has.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from typing import Any

from rl.rollout import Trajectory
from rl.toolcalls import parse_turn

IMAGE_SIDE = 192  # pixels: a thumbnail shows what the model was shown without making the log heavy


@dataclass
class Scores:
    """How the trainer scored a batch, row by row in the batch's order (plain lists, no tensors)."""

    names: list[str]  # reward functions, in config order
    per_func: list[list[float]]  # per episode, per reward function (NaN: the function returned None)
    rewards: list[float]  # per episode: per_func's weighted sum, as the trainer computed it (NaN: none scored)
    advantages: list[float]  # per episode: its group-relative advantage
    token_advantages: list[list[float]] | None  # per episode, per completion token (step-level credit) or None
    trained: list[list[int]]  # per episode, per completion token: 1 where the loss reads the token


def sample_rows(step: int, trajectories: list[Trajectory], seeds: list[int], chat, scores: Scores, count: int,
                token_count: int) -> list[dict]:
    """The rows for the first `count` episodes of a batch; the first `token_count` of them with tokens."""
    return [episode_row(step, trajectories[i], seeds[i], chat, scores, i, with_tokens=i < token_count)
            for i in range(min(count, len(trajectories)))]


def episode_row(step: int, t: Trajectory, seed: int, chat, scores: Scores, i: int, with_tokens: bool) -> dict:
    rewards = dict(zip(scores.names, (_number(v) for v in scores.per_func[i])))
    row = {"step": step, **played_row(t, seed, chat), "reward": _number(scores.rewards[i]),
           "rewards": rewards, "advantage": _number(scores.advantages[i]),
           "text": chat.decode(t.prompt_ids + t.completion_ids)}
    if with_tokens and t.completion_ids:
        n = len(t.completion_ids)
        advantages = (scores.token_advantages[i][:n] if scores.token_advantages is not None
                      else [scores.advantages[i]] * n)
        row["tokens"] = token_view(t.completion_ids, t.env_mask, scores.trained[i][:n], advantages, chat.decode)
    return row


def eval_rows(trajectories: list[Trajectory], seeds: list[int], chat, count: int) -> list[dict]:
    """The rows of an evaluation's first `count` episodes, in the order played: episode i is sample
    `i // len(seeds)` of `seeds[i % len(seeds)]`, as in its result's `per_episode`. A training row less what
    only training has (step, rewards, advantage, tokens) and less the decoded text, which the turns already
    hold: decoding every episode again would double the file and the time to write it."""
    n = len(seeds)
    return [{**played_row(t, seeds[i % n], chat), "sample": i // n} for i, t in enumerate(trajectories[:count])]


def played_row(t: Trajectory, seed: int, chat) -> dict:
    """What every logged episode holds, trained or evaluated: its seed, its facts (`info`: solved, return,
    stop reason, env error, the env's own), the messages it started from and its turns."""
    return {"seed": seed, "info": t.info, "prompt": [_message(m) for m in t.prompt], "turns": turn_rows(t, chat)}


def turn_rows(t: Trajectory, chat) -> list[dict]:
    """Per model turn: its text, the calls parsed from it or the parse errors, and the env's reply."""
    rows = []
    for k, text in enumerate(t.texts):
        parsed = parse_turn(chat.tool_format, text)
        rows.append({"text": text, "calls": [{"name": c.name, "arguments": c.arguments} for c in parsed.calls],
                     "errors": list(parsed.errors),
                     "reply": [_message(m) for m in t.replies[k]] if k < len(t.replies) else []})
    return rows


def token_view(ids: list[int], env_mask: list[int], trained: list[int], advantages: list[float], decode) -> dict:
    """Each token's text, and [start, end, env_mask, trained, advantage] runs over them."""
    spans: list[list] = []
    for k, key in enumerate(zip(env_mask, trained, (round(a, 4) for a in advantages))):
        if spans and tuple(spans[-1][2:]) == key and spans[-1][1] == k:
            spans[-1][1] = k + 1
        else:
            spans.append([k, k + 1, *key])
    return {"pieces": token_pieces(ids, decode), "spans": spans}


def token_pieces(ids: list[int], decode) -> list[str]:
    """Each token's text. A character split over several byte tokens decodes only as a whole: it goes to the
    first of its tokens, and the others show as empty."""
    pieces, start = [], None
    for k, token in enumerate(ids):
        pieces.append(decode([token]))
        if "\ufffd" not in pieces[-1]:
            start = None
            continue
        if start is None or k - start >= 4:  # UTF-8 characters are at most 4 bytes: these never complete
            start = k
        joined = decode(ids[start:k + 1])
        if "\ufffd" not in joined:  # the character is complete
            pieces[start:] = [joined] + [""] * (k - start)
            start = None
    return pieces


def _message(message: dict) -> dict:
    out = {key: message[key] for key in ("role", "name", "content") if key in message}
    if not isinstance(out.get("content", ""), str):
        out["content"] = str(out["content"])
    images = [url for url in map(image_url, message.get("images") or ()) if url]
    return {**out, "images": images} if images else out


def image_url(image: Any) -> str | None:
    """A PIL image as a JPEG data URL, at most IMAGE_SIDE pixels a side; None for anything else."""
    if not hasattr(image, "thumbnail"):
        return None
    small = image.convert("RGB")
    small.thumbnail((IMAGE_SIDE, IMAGE_SIDE))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _number(value: float) -> float | None:
    """JSON has no NaN (a browser's JSON.parse rejects it): an unscored value is null."""
    return None if value is None or math.isnan(value) else float(value)
