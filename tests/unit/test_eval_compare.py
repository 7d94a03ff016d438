"""Paired comparison of two eval results on the same seeds (McNemar's exact test)."""

import importlib.util
import json
from pathlib import Path

import pytest

from rl.evaluation import paired_comparison

EVAL_PY = Path(__file__).resolve().parents[2] / "launch" / "eval.py"


def result(label, solved, seed_start=10_000_000, env_kwargs=None):
    return {"label": label, "env": "sudoku", "env_kwargs": env_kwargs or {"size": 4},
            "seeds": [seed_start, seed_start + len(solved)],
            "per_episode": [{"seed": seed_start + i, "sample": 0, "solved": s, "return": float(s), "turns": 3}
                            for i, s in enumerate(solved)]}


def test_only_seeds_where_the_two_differ_decide_and_each_is_a_fair_coin_under_no_difference():
    a = result("SFT", [True, True, False, False, False, False, False, False, False, False])
    b = result("GRPO", [True, False, True, True, True, True, True, True, False, False])
    c = paired_comparison(a, b)
    assert (c["solved_by_b_only"], c["solved_by_a_only"], c["episodes"]) == (6, 1, 10)
    assert (c["a_solve_rate"], c["b_solve_rate"]) == (0.2, 0.7)
    assert c["p_value"] == pytest.approx(2 * (1 + 7) / 2**7)  # two-sided: P(X <= 1) for X ~ Bin(7, 1/2), doubled
    assert paired_comparison(a, a)["p_value"] == 1.0
    # only the seeds both played count
    c = paired_comparison(a, result("later", [True] * 10, seed_start=10_000_005))
    assert c["episodes"] == 5 and c["solved_by_b_only"] == 5 and c["p_value"] == pytest.approx(2 / 32)


def test_incomparable_results_are_named():
    a = result("SFT", [True, False])
    with pytest.raises(ValueError, match="different env settings"):
        paired_comparison(a, result("x", [True, False], env_kwargs={"size": 9}))
    with pytest.raises(ValueError, match="no episodes in common"):
        paired_comparison(a, result("x", [True, False], seed_start=5))
    old = {k: v for k, v in a.items() if k != "per_episode"}
    with pytest.raises(ValueError, match="'SFT'.*no per-episode outcomes.*evaluate that model again"):
        paired_comparison(old, a)


def test_settings_named_to_differ_may_differ_and_no_others():
    a = result("reading", [False, False, True], env_kwargs={"size": 4, "list_empty_cells": True})
    b = result("constrained", [True, True, True], env_kwargs={"size": 4, "list_empty_cells": "constrained"})
    with pytest.raises(ValueError, match=r"different env settings.*--differ KEY allows one"):
        paired_comparison(a, b)
    c = paired_comparison(a, b, differ=("list_empty_cells",))
    assert (c["solved_by_b_only"], c["solved_by_a_only"]) == (2, 0)
    assert c["env_kwargs_a_b"] == {"list_empty_cells": [True, "constrained"]}
    b["env_kwargs"]["size"] = 9
    with pytest.raises(ValueError, match=r"different env settings.*\(beyond list_empty_cells\)"):
        paired_comparison(a, b, differ=("list_empty_cells",))


def test_eval_compare_prints_the_paired_line_and_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("eval_entry", EVAL_PY)
    eval_entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_entry)
    paths = []
    for r in (result("SFT", [False, False, True]), result("SFT+GRPO", [True, True, True])):
        paths.append(tmp_path / f"{r['label']}.json")
        paths[-1].write_text(json.dumps(r))
    assert eval_entry.main(["--compare", *map(str, paths)]) == 0
    line, data = capsys.readouterr().out.splitlines()
    assert line.startswith("SFT+GRPO vs SFT on the same 3 episodes: 100.0% vs 33.3%") and "p = 0.5" in line
    assert json.loads(data)["solved_by_b_only"] == 2
    with pytest.raises(SystemExit):
        eval_entry.main(["--compare", str(paths[0]), str(tmp_path / "missing.json")])
    # two results under one label (two runs' step-0 rows) are named by their files
    for i, p in enumerate(paths):
        p.write_text(json.dumps(result("credit@step-0", [True, i == 1, False])))
    assert eval_entry.main(["--compare", *map(str, paths)]) == 0
    data = json.loads(capsys.readouterr().out.splitlines()[1])
    assert (data["a"], data["b"], data["solved_by_b_only"]) == (str(paths[0]), str(paths[1]), 1)


def held_out_run(root, name, outcomes_by_step, facts=None):
    """A GRPO run folder with heldout/step-N.json results, as eval.every_steps writes them."""
    from rl.config import load_config
    from rl.evaluation import eval_result

    folder = root / name / "heldout"
    folder.mkdir(parents=True)
    cfg = load_config(None, ["env.kwargs.size=4"])
    for step, solved in outcomes_by_step.items():
        seeds = list(range(10_000_000, 10_000_000 + len(solved)))
        infos = [{"solved": s, "episode_return": float(s), "model_turns": 3, "turns": 3, "invalid_actions": 1,
                  **(facts or {})} for s in solved]
        r = eval_result(cfg, f"{name}@step-{step}", "vllm", seeds, infos, 0.0, step=step)
        (folder / f"step-{step}.json").write_text(json.dumps(r))
    return root / name


def test_heldout_table_pairs_each_step_with_the_first_and_the_runs_last_steps(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("eval_entry", EVAL_PY)
    eval_entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_entry)
    a = held_out_run(tmp_path, "credit", {0: [False] * 8, 5: [True] * 2 + [False] * 6, 10: [True] * 7 + [False]})
    b = held_out_run(tmp_path, "episode", {0: [False] * 8, 10: [True] + [False] * 7})
    assert eval_entry.main(["--heldout", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| credit", "| episode"))]
    assert [r.split(" | ")[1] for r in rows] == ["0", "5", "10", "0", "10"]  # steps in order, not as strings sort
    assert "| 87.5% [" in rows[2] and "7 / 0, p = 0.0156" in rows[2]  # 7 seeds solved only at step 10
    assert "episode@step-10 vs credit@step-10 on the same 8 episodes: 12.5% vs 87.5%" in out
    with pytest.raises(SystemExit):
        eval_entry.main(["--heldout", str(tmp_path / "nothing")])


def test_heldout_table_gives_each_kind_of_move_its_share_of_all_moves(tmp_path, capsys):
    from rl.evaluation import summarize_infos

    spec = importlib.util.spec_from_file_location("eval_entry", EVAL_PY)
    eval_entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_entry)
    counted = held_out_run(tmp_path, "counted", {0: [False, True]},
                           {"moves": 4, "right_moves": 3, "clash_moves": 1, "wrong_moves": 0})
    plain = held_out_run(tmp_path, "plain", {0: [False, True]})
    assert eval_entry.main(["--heldout", str(counted), str(plain)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("| counted", "| plain"))]
    assert " | clash 25% / right 75% / wrong 0% | " in rows[0] and " | - | " in rows[1]
    # shares of all moves, not means of each episode's shares: 1 clash in 1 move and 0 in 9 is 10%
    shares = summarize_infos([{"moves": 1, "clash_moves": 1}, {"moves": 9, "clash_moves": 0}])["move_shares"]
    assert shares == {"clash": pytest.approx(0.1)}

