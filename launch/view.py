"""Look at episodes: one self-contained HTML file (no CDN, no server; opens from disk) for a training run,
an eval result, or two eval results compared on the seeds both played.

    python launch/view.py runs/demo                                  # -> runs/demo/view.html
    python launch/view.py runs/eval/sudoku-SFT.json                  # -> runs/eval/sudoku-SFT.html (with the episodes
                                                                     #    eval.py wrote beside it, turn by turn)
    python launch/view.py runs/eval/sudoku-SFT.json runs/eval/sudoku-SFT+GRPO.json --out compare.html
    python launch/view.py runs/demo --serve --port 8050              # live, for a run still training
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="RUN_OR_RESULT",
                        help="a run folder, an eval result .json, or two eval results to compare")
    parser.add_argument("--out", help="the HTML file to write (default: beside what it shows)")
    parser.add_argument("--serve", action="store_true", help="serve on localhost, refreshed as episodes arrive")
    parser.add_argument("--port", type=int, default=8050, help="port for --serve (0: any free one)")
    args = parser.parse_args(argv)
    from rl.view import SourceError, write

    try:
        if args.serve:
            from rl.view.serve import make_server

            server = make_server(args.paths, args.port)
            host, port = server.server_address[:2]
            print(f"viewer on http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
            return 0
        out, count = write(args.paths, args.out)
    except (OSError, SourceError) as e:
        parser.error(str(e))
    print(f"{count} episodes: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
