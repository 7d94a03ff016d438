"""Evaluate a model, or a reference policy, on held-out seeds that no training run uses.

    python launch/eval.py --env sudoku --model runs/demo --episodes 200
    python launch/eval.py --env sudoku --policy expert --episodes 200
    python launch/eval.py --env sudoku --model runs/demo --set eval.temperature=1.0 --set eval.k=4
    python launch/eval.py --config configs/sudoku-sft.yaml --env sudoku --model runs/grpo --label SFT+GRPO
    python launch/eval.py --compare runs/eval/sudoku-SFT.json runs/eval/sudoku-SFT+GRPO.json
    python launch/eval.py --heldout runs/grpo-a runs/grpo-b   # GRPO runs' held-out curves, paired
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rl.cli import add_run_arguments, resolve_or_exit, run_stop_exits


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--episodes", type=int, help="shortcut for --set eval.episodes=N")
    parser.add_argument("--policy", choices=["expert", "random"], help="evaluate a reference policy, not a model")
    parser.add_argument("--label", help="the row's name in results.md and the JSON file (default: the model's name)")
    parser.add_argument("--out", default="runs/eval",
                        help="folder for <env>-<label>.json, its episodes (.episodes.jsonl) and results.md")
    parser.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                        help="compare two results on the seeds both played (paired, McNemar's exact test); "
                             "runs nothing")
    parser.add_argument("--differ", action="append", default=[], metavar="KEY",
                        help="with --compare: an env setting (env.kwargs key) the two results may differ in, where "
                             "the seeds still give the same tasks (e.g. list_empty_cells); repeatable")
    parser.add_argument("--heldout", nargs="+", metavar="RUN",
                        help="tabulate GRPO runs' held-out measurements (RUN/heldout/step-*.json); runs nothing")
    args = parser.parse_args(argv)
    if args.heldout:
        from rl.evaluation import heldout_table

        try:
            print(heldout_table(args.heldout), end="")
        except (OSError, ValueError) as e:
            parser.error(str(e))
        return 0
    if args.compare:
        from rl.evaluation import paired_comparison, paired_line

        try:
            a, b = (json.loads(Path(p).read_text()) for p in args.compare)
            if a.get("label") == b.get("label"):  # e.g. two runs' step-0 rows: name each by its file
                a["label"], b["label"] = args.compare
            comparison = paired_comparison(a, b, tuple(args.differ))
        except (OSError, ValueError) as e:
            parser.error(str(e))
        print(paired_line(comparison))
        print(json.dumps(comparison))
        return 0
    if args.episodes:
        args.overrides.append(f"eval.episodes={args.episodes}")
    cfg = resolve_or_exit(parser, args)
    from rl.evaluation import MARKDOWN_HEADER, evaluate, markdown_row, save_result

    transcripts: list[dict] = []
    with run_stop_exits(parser):
        result = evaluate(cfg, policy=args.policy or "", transcripts=transcripts)
    if args.label:
        result["label"] = args.label
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    label = Path(result["label"]).name or result["label"]
    from envs import short_name

    env = short_name(cfg.env.name)  # "path/to/guess.py:Guess" -> "Guess"
    save_result(result, transcripts, out / f"{env}-{label}.json")  # and its episodes, for launch/view.py
    table = out / "results.md"
    if not table.exists():
        table.write_text(MARKDOWN_HEADER + "\n")
    with table.open("a") as f:
        f.write(markdown_row(result) + "\n")
    print(MARKDOWN_HEADER)
    print(markdown_row(result))
    print(f"results: {out / f'{env}-{label}.json'}, table: {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
