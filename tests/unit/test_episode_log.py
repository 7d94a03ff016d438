"""What episodes.jsonl keeps of a sampled episode: turns with parsed calls and env replies, rewards, and a
bounded token view whose runs reproduce env_mask, the loss mask and per-token advantages exactly."""

import json
import math

from PIL import Image

import envs
from rl.config import RolloutSection
from rl.episode_log import Scores, eval_rows, image_url, sample_rows, token_pieces, token_view
from rl.rollout import run_episodes


def play(chat, scripted, n=3):
    replies = ['<tool_call>\n{"name": "place", "arguments": {"row": 1, "col": 1, "digit": 9}}\n</tool_call>',
               '<tool_call>\n{"name": "place", "arguments": {"row": 1,}}\n</tool_call>']
    backend = scripted(lambda context, turn: replies[turn % 2])
    return run_episodes([envs.make("sudoku") for _ in range(n)], list(range(n)), backend, chat,
                        RolloutSection(max_turns=2, max_completion_tokens=4096))


def scores_for(trajectories, token_advantages=True):
    widths = [len(t.completion_ids) for t in trajectories]
    return Scores(names=["solved", "progress"],  # weights 1.0 and 0.5
                  per_func=[[0.0, 1.0], [1.0, float("nan")], [0.0, 0.0]][: len(trajectories)],
                  rewards=[0.5, 1.0, 0.0][: len(trajectories)],
                  advantages=[0.5, -0.25, 0.0][: len(trajectories)],
                  token_advantages=[[0.1 * (k // 50) for k in range(w)] for w in widths] if token_advantages else None,
                  trained=[t.env_mask for t in trajectories])


def test_rows_hold_turns_calls_replies_rewards_and_only_capped_token_views(chat, scripted):
    trajectories = play(chat, scripted)
    rows = sample_rows(7, trajectories, [11, 12, 13], chat, scores_for(trajectories), count=2, token_count=1)
    assert len(rows) == 2 and [r["seed"] for r in rows] == [11, 12]
    assert "tokens" in rows[0] and "tokens" not in rows[1]  # the cap: one token view per step here
    first = rows[0]
    assert first["step"] == 7 and first["reward"] == 0.5 and first["rewards"] == {"solved": 0.0, "progress": 1.0}
    assert rows[1]["rewards"]["progress"] is None and rows[1]["reward"] == 1.0  # an unscored value is null
    call, malformed = first["turns"]
    assert call["calls"] == [{"name": "place", "arguments": {"row": 1, "col": 1, "digit": 9}}] and not call["errors"]
    assert call["reply"][0]["role"] == "tool" and call["reply"][0]["name"] == "place"
    assert call["reply"][0]["content"] == trajectories[0].replies[0][0]["content"]
    assert not malformed["calls"] and "Malformed tool call" in malformed["errors"][0]
    assert malformed["reply"][0]["name"] == "error"
    json.loads(json.dumps(rows, allow_nan=False))  # strict JSON: a browser parses it


def test_eval_rows_are_training_rows_without_what_training_adds(chat, scripted):
    trajectories = play(chat, scripted, n=4)  # read as seeds 20 and 21 played twice: sample 0 of both, then 1
    rows = eval_rows(trajectories, [20, 21], chat, count=3)  # the cap: the first three played
    assert [(r["seed"], r["sample"]) for r in rows] == [(20, 0), (21, 0), (20, 1)]
    trained = sample_rows(0, trajectories, [20, 21, 20, 21], chat, scores_for(trajectories[:3]), count=3,
                          token_count=3)
    for row, train_row, t in zip(rows, trained, trajectories):
        assert set(row) == {"seed", "sample", "info", "prompt", "turns"}  # no step, rewards, advantage, text, tokens
        shared = ("seed", "info", "prompt", "turns")
        assert {k: train_row[k] for k in shared} == {k: row[k] for k in row if k != "sample"}
        assert row["info"]["stop_reason"] == t.info["stop_reason"] and "env_error" in row["info"]
        assert row["prompt"][0]["content"] == t.prompt[0]["content"]
    assert rows[0]["turns"][0]["calls"][0]["name"] == "place" and "Malformed" in rows[0]["turns"][1]["errors"][0]
    json.loads(json.dumps(rows, allow_nan=False))
    assert eval_rows(trajectories, [20, 21], chat, count=0) == []


def test_token_runs_give_back_every_token_mask_and_advantage(chat, scripted):
    [t] = play(chat, scripted, n=1)
    scores = scores_for([t])
    [row] = sample_rows(0, [t], [0], chat, scores, count=1, token_count=1)
    view = row["tokens"]
    assert "".join(view["pieces"]) == chat.decode(t.completion_ids)
    env_mask, trained, advantages = [], [], []
    for start, end, mask, loss, adv in view["spans"]:
        env_mask += [mask] * (end - start)
        trained += [loss] * (end - start)
        advantages += [adv] * (end - start)
    assert env_mask == t.env_mask and trained == t.env_mask
    assert advantages == [round(a, 4) for a in scores.token_advantages[0]]
    assert 0 in env_mask and 1 in env_mask and len(set(advantages)) > 1
    # without step-level credit every token has the episode's advantage
    [row] = sample_rows(0, [t], [0], chat, scores_for([t], token_advantages=False), count=1, token_count=1)
    assert {span[4] for span in row["tokens"]["spans"]} == {0.5}


def test_spans_merge_runs_and_split_where_anything_changes():
    decode = lambda ids: "".join(chr(97 + i) for i in ids)
    view = token_view([0, 1, 2, 3, 4], [1, 1, 0, 0, 1], [1, 1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5, 0.5], decode)
    assert view == {"pieces": ["a", "b", "c", "d", "e"], "spans": [[0, 2, 1, 1, 0.5], [2, 4, 0, 0, 0.5],
                                                                   [4, 5, 1, 0, 0.5]]}


def test_a_character_split_over_byte_tokens_goes_to_its_first_token():
    data = "aé€b".encode()  # é is 2 bytes, € is 3
    decode = lambda ids: bytes(ids).decode(errors="replace")
    pieces = token_pieces(list(data), decode)
    assert pieces == ["a", "é", "", "€", "", "", "b"]
    stray = token_pieces([0xE2] * 9 + [0x61], decode)  # bytes that never complete a character stay as they are
    assert len(stray) == 10 and stray[-1] == "a"


def test_images_become_small_jpeg_data_urls():
    url = image_url(Image.new("RGB", (640, 480), (200, 10, 10)))
    assert url.startswith("data:image/jpeg;base64,")
    import base64
    import io

    thumb = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert max(thumb.size) == 192 and math.isclose(thumb.size[0] / thumb.size[1], 640 / 480, rel_tol=0.02)
    assert image_url("not an image") is None
