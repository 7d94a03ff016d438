"""GRPO training of a tool-using agent.

    python launch/grpo.py --env sudoku
    accelerate launch launch/grpo.py --env sudoku --set grpo.max_steps=200
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rl.cli import add_run_arguments, resolve_or_exit, run_stop_exits
from rl.resume import finished, main_process


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    args = parser.parse_args(argv)
    cfg = resolve_or_exit(parser, args, resume=args.resume)
    done = finished(Path(cfg.output_dir) / cfg.name, cfg.grpo.max_steps) if args.resume else None
    if done:  # before torch loads: nothing to train, and final/ stays as it is
        if main_process():
            print(done)
        return 0
    from rl.trainer import train

    with run_stop_exits(parser):
        out = train(cfg, resume=args.resume, end_group=True)  # the launcher's process group ends with the run
    if main_process():  # under accelerate launch every process gets here
        print(f"run finished: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
