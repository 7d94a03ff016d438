"""The viewer's data and page without a browser: runs, eval results and comparisons read into index and
detail lines; a page no episode text can break out of; the live server on a real localhost port."""

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import envs
from rl.config import RolloutSection, load_config
from rl.episode_log import eval_rows
from rl.evaluation import eval_result as make_result
from rl.evaluation import save_result
from rl.rollout import run_episodes
from rl.view import SourceError, load, render, write
from rl.view.serve import make_server

ROOT = Path(__file__).resolve().parents[2]
CALL = '<tool_call>\n{"name": "place", "arguments": {"row": 1, "col": 1, "digit": 9}}\n</tool_call>'
MALFORMED = '<tool_call>\n{"name": "place", "arguments": {"row": 1,}}\n</tool_call>'


def episode(step, solved=False, stop="max_turns", error="", text="hello", reward=1.0):
    return {"step": step, "seed": 100 + step, "reward": reward, "rewards": {"solved": float(solved)},
            "info": {"solved": solved, "model_turns": 2, "stop_reason": stop, "env_error": error,
                     "progress": float("nan")}, "text": text, "turns": []}


def write_run(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text("env: {name: sudoku}\nmodel: {name: tiny}\n"
                                        "grpo: {step_advantage_weight: 1.0}\n")
    (folder / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def eval_result(label, solved):
    per = [{"seed": 10_000_000 + i, "sample": 0, "solved": s, "return": float(s), "turns": 3}
           for i, s in enumerate(solved)]
    return {"label": label, "env": "sudoku", "env_kwargs": {"size": 4}, "seeds": [10_000_000, 10_000_000 + len(per)],
            "solve_rate": sum(solved) / len(solved), "per_episode": per}


def test_a_run_reads_into_index_and_lines_that_a_browser_can_parse(tmp_path):
    run = write_run(tmp_path / "r", [episode(0), episode(1, solved=True, stop="env_done"),
                                     episode(2, error="RuntimeError: boom", stop="env_error", reward=float("nan"))])
    data = load([run])
    assert data["meta"]["kind"] == "run" and data["meta"]["env"] == "sudoku"
    assert data["meta"]["step_advantage_weight"] == 1.0
    assert [e["step"] for e in data["index"]] == [0, 1, 2]
    assert [e["solved"] for e in data["index"]] == [False, True, False]
    assert [e["stop"] for e in data["index"]] == ["max_turns", "env_done", "env_error"]
    assert [e["error"] for e in data["index"]] == [False, False, True] and data["index"][2]["reward"] is None
    detail = json.loads(data["lines"][0])  # NaN (which Python's json writes) became null
    assert detail["info"]["progress"] is None and "NaN" not in "".join(data["lines"])


def test_episode_text_cannot_end_the_pages_script(tmp_path):
    nasty = "</script><script>alert(1)</script><!-- {{index}}"
    page = render(load([write_run(tmp_path / "r", [episode(0, text=nasty)])]))
    # the page's own four blocks (meta, index, episodes, script), none from the data
    assert page.count("</script>") == 4
    assert "{{" not in page.split("<script id=\"meta\"")[0]  # every template marker filled
    assert json.loads(page.split('<script id="episodes" type="text/plain">')[1].split("</script>")[0])["text"] == nasty


def test_two_eval_results_pair_on_shared_seeds(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(eval_result("SFT", [True, False, True, False])))
    b.write_text(json.dumps(eval_result("GRPO", [True, True, False])))  # one seed fewer
    data = load([a, b])
    assert data["meta"]["kind"] == "compare" and data["meta"]["labels"] == ["SFT", "GRPO"]
    assert [e["pair"] for e in data["index"]] == ["both solved", "only GRPO", "only SFT"]
    out, count = write([a, b])
    assert count == 3 and out == tmp_path / "b-vs-a.html" and "GRPO vs SFT" in out.read_text()
    single = load([a])
    assert single["meta"]["kind"] == "eval" and [e["solved"] for e in single["index"]] == [True, False, True, False]


def played_eval(folder: Path, label: str, reply: str, chat, scripted, episodes=3, transcripts=1000) -> Path:
    """An eval result and its episodes as launch/eval.py writes them, from episodes a scripted model played."""
    seeds = list(range(10_000_000, 10_000_000 + episodes))
    played = run_episodes([envs.make("sudoku", size=4) for _ in seeds], seeds, scripted(lambda context, turn: reply),
                          chat, RolloutSection(max_turns=2, max_completion_tokens=4096))
    result = make_result(load_config(None, ["env.kwargs.size=4"]), label, "scripted", seeds,
                         [t.info for t in played], 0.0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"sudoku-{label}.json"
    save_result(result, eval_rows(played, seeds, chat, transcripts), path)
    return path


def test_an_eval_result_opens_its_episodes_turn_by_turn_up_to_the_cap(tmp_path, chat, scripted):
    path = played_eval(tmp_path / "eval", "SFT", CALL, chat, scripted, transcripts=2)
    assert json.loads(path.read_text())["episodes_file"] == "sudoku-SFT.episodes.jsonl"
    assert len((path.parent / "sudoku-SFT.episodes.jsonl").read_text().splitlines()) == 2
    moved = tmp_path / "elsewhere"
    path.parent.rename(moved)  # the result names its episodes relative to itself
    data = load([moved / path.name])
    assert data["meta"]["played"] == 2 and not data["meta"]["note"]
    assert [e["played"] for e in data["index"]] == [True, True, False]
    assert [e["stop"] for e in data["index"]] == ["max_turns", "max_turns", ""]  # past the cap: outcome only
    first, last = (json.loads(line) for line in (data["lines"][0], data["lines"][2]))
    assert first["seed"] == 10_000_000 and first["sample"] == 0 and first["info"]["model_turns"] == 2
    assert [t["calls"][0]["name"] for t in first["turns"]] == ["place", "place"]
    assert first["turns"][0]["reply"][0]["role"] == "tool" and first["prompt"][0]["content"].startswith("Solve")
    assert last == {"seed": 10_000_002, "sample": 0, "solved": False, "return": 0.0, "turns": 2}
    (moved / "sudoku-SFT.episodes.jsonl").unlink()  # a result copied without its episodes: outcomes, and a note
    gone = load([moved / path.name])
    assert gone["meta"]["played"] == 0 and "sudoku-SFT.episodes.jsonl not found" in gone["meta"]["note"]
    assert all(isinstance(json.loads(line)["turns"], int) for line in gone["lines"])


def test_a_comparison_holds_both_transcripts_of_a_seed_and_old_results_still_pair(tmp_path, chat, scripted):
    a = played_eval(tmp_path, "A", CALL, chat, scripted)
    b = played_eval(tmp_path, "B", MALFORMED, chat, scripted)
    data = load([a, b])
    assert data["meta"]["played"] == 6 and all(e["played"] for e in data["index"])
    pair = json.loads(data["lines"][1])
    assert pair["a"]["seed"] == pair["b"]["seed"] == 10_000_001
    assert pair["a"]["turns"][0]["calls"] and not pair["a"]["turns"][0]["errors"]
    assert not pair["b"]["turns"][0]["calls"] and "Malformed" in pair["b"]["turns"][0]["errors"][0]
    old = tmp_path / "old.json"  # an eval.py result from before episodes were written
    old.write_text(json.dumps(eval_result("old", [True, False, True])))
    mixed = load([old, b])
    assert mixed["meta"]["played"] == 3 and len(mixed["index"]) == 3
    pair = json.loads(mixed["lines"][0])
    assert pair["a"]["turns"] == 3 and pair["b"]["turns"][0]["errors"]
    assert [e["pair"] for e in mixed["index"]] == ["only old", "neither", "only old"]


@pytest.mark.parametrize("name, content, message", [
    ("", None, "no episodes.jsonl"),
    ("x.json", '{"label": "old"}', "needs per-episode outcomes"),
    ("x.txt", "", "not a run folder or an eval result"),
])
def test_what_is_not_a_run_or_result_is_named(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(SourceError, match=message):
        load([tmp_path / name])


def test_view_command_writes_the_file_or_names_the_bad_path(tmp_path):
    run = write_run(tmp_path / "r", [episode(0), episode(1)])
    done = subprocess.run([sys.executable, str(ROOT / "launch" / "view.py"), str(run)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0 and f"2 episodes: {run / 'view.html'}" in done.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "launch" / "view.py"), str(tmp_path / "nosuch")],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "nosuch: not a run folder or an eval result .json" in bad.stderr


def get(url):
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read().decode()


def test_serve_gives_the_page_and_episodes_as_they_arrive(tmp_path):
    run = write_run(tmp_path / "r", [episode(0), episode(1)])
    server = make_server([run], port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        page = get(base + "/")
        assert '"live":true' in page and "viewer.js" not in page and "function openEpisode" in page
        first = json.loads(get(base + "/episodes?after=0"))
        assert first["total"] == 2 and len(first["lines"]) == 2 and not first["reset"]
        with (run / "episodes.jsonl").open("a") as f:
            f.write(json.dumps(episode(2, solved=True)) + "\n")
            f.write(json.dumps(episode(3))[:40])  # a line still being written is not sent yet
        new = json.loads(get(base + "/episodes?after=2"))
        assert new["total"] == 3 and [e["step"] for e in new["index"]] == [2] and new["index"][0]["solved"]
        (run / "episodes.jsonl").write_text(json.dumps(episode(0)) + "\n")  # a resumed run cut the file
        cut = json.loads(get(base + "/episodes?after=3"))
        assert cut["reset"] and cut["total"] == 1 and len(cut["lines"]) == 1
        with pytest.raises(urllib.error.HTTPError, match="400"):
            get(base + "/episodes?after=-1")
    finally:
        server.shutdown()
        server.server_close()


def test_a_log_replaced_by_a_longer_one_is_read_again_from_its_start(tmp_path):
    """A resumed run trims episodes.jsonl into a new file, which can outgrow the old one before the next poll."""
    import os

    run = write_run(tmp_path / "r", [episode(0), episode(1), episode(2)])
    server = make_server([run], port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        first = json.loads(get(base + "/episodes?after=0"))
        assert first["total"] == 3 and not first["reset"]
        trimmed = tmp_path / "trimmed.jsonl"  # steps 0 and 1 kept, then the resumed run's new episodes
        trimmed.write_text("".join(json.dumps(episode(s, text="x" * 200)) + "\n" for s in (0, 1, 12, 13, 14)))
        os.replace(trimmed, run / "episodes.jsonl")
        again = json.loads(get(base + f"/episodes?after=3&version={first['version']}"))
        assert again["reset"] and again["total"] == 5 and [e["step"] for e in again["index"]] == [0, 1, 12, 13, 14]
        same = json.loads(get(base + f"/episodes?after=5&version={again['version']}"))
        assert not same["reset"] and same["lines"] == []
        with pytest.raises(urllib.error.HTTPError, match="400"):
            get(base + "/episodes?after=1&version=new")
    finally:
        server.shutdown()
        server.server_close()


def test_a_bad_line_in_a_live_run_is_named_and_no_episode_is_lost(tmp_path):
    run = write_run(tmp_path / "r", [episode(0)])
    server = make_server([run], port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert json.loads(get(base + "/episodes?after=0"))["total"] == 1
        with (run / "episodes.jsonl").open("a") as f:
            f.write(json.dumps(episode(1)) + "\n" + "{not json\n")
        with pytest.raises(urllib.error.HTTPError, match="500") as failed:
            get(base + "/episodes?after=1")
        assert "episode line 3 is not JSON" in failed.value.read().decode()
        lines = (run / "episodes.jsonl").read_text().splitlines()  # the line mended: nothing after it was skipped
        (run / "episodes.jsonl").write_text("\n".join(lines[:2] + [json.dumps(episode(2))]) + "\n")
        new = json.loads(get(base + "/episodes?after=1"))
        assert new["total"] == 3 and [e["step"] for e in new["index"]] == [1, 2]
    finally:
        server.shutdown()
        server.server_close()
