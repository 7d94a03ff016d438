"""Benchmarks with their baselines, written as JSON and Markdown.

    python launch/bench.py --suite sandbox --out bench-results
    python launch/bench.py --list
    python launch/bench.py --suite scoring --check rl/bench/baselines/scoring-cpu.json   # exit 1 on a regression
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rl.bench import load_suites, regressions, run
from rl.config import parse_override


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", help="which benchmark to run")
    parser.add_argument("--list", action="store_true", help="list the suites")
    parser.add_argument("--out", default="bench-results", help="folder for <suite>.json and <suite>.md")
    parser.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                        help="a suite option, e.g. episodes=16")
    parser.add_argument("--check", metavar="BASELINE.json",
                        help="a result of this suite to compare with: every speedup column must reach "
                             "(1 - tolerance) x its own")
    parser.add_argument("--tolerance", type=float, default=0.2, help="for --check (default 0.2)")
    args = parser.parse_args(argv)
    if args.list or not args.suite:
        for name, fn in sorted(load_suites().items()):
            print(f"{name}: {(fn.__doc__ or '').strip().splitlines()[0] if fn.__doc__ else ''}")
        return 0
    options = dict(parse_override(o) for o in args.options)
    baseline = _baseline(parser, args) if args.check else None
    try:
        path = run(args.suite, options, Path(args.out))
        problems = regressions(json.loads(path.read_text()), baseline, args.tolerance) if baseline else []
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    print(path.with_suffix(".md").read_text())
    print(f"results: {path}")
    if args.check:
        print("\n".join(f"regression: {p}" for p in problems) or f"no regression against {args.check}")
    return 1 if problems else 0


def _baseline(parser, args) -> dict:
    """The --check file, refused before the suite runs if it cannot be one of this suite's results."""
    try:
        baseline = json.loads(Path(args.check).read_text())
    except (OSError, ValueError) as e:
        parser.exit(2, f"error: --check {args.check!r}: not a JSON result of launch/bench.py ({e})\n")
    suite = baseline.get("suite") if isinstance(baseline, dict) else None
    if suite != args.suite:
        parser.exit(2, f"error: --check {args.check!r} holds a result of suite {suite!r}, not of {args.suite!r}\n")
    if not baseline.get("rows"):
        parser.exit(2, f"error: --check {args.check!r} holds no rows to compare with\n")
    if not 0 <= args.tolerance < 1:
        parser.exit(2, f"error: --tolerance must be in [0, 1), got {args.tolerance}\n")
    return baseline


if __name__ == "__main__":
    sys.exit(main())
