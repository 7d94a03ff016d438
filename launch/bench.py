"""Benchmarks with their baselines, written as JSON and Markdown.

    python launch/bench.py --suite sandbox --out bench-results
    python launch/bench.py --list
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rl.bench import load_suites, run  # noqa: E402
from rl.config import parse_override  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", help="which benchmark to run")
    parser.add_argument("--list", action="store_true", help="list the suites")
    parser.add_argument("--out", default="bench-results", help="folder for <suite>.json and <suite>.md")
    parser.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                        help="a suite option, e.g. episodes=16")
    args = parser.parse_args(argv)
    if args.list or not args.suite:
        for name, fn in sorted(load_suites().items()):
            print(f"{name}: {(fn.__doc__ or '').strip().splitlines()[0] if fn.__doc__ else ''}")
        return 0
    options = dict(parse_override(o) for o in args.options)
    try:
        path = run(args.suite, options, Path(args.out))
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    print(path.with_suffix(".md").read_text())
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
