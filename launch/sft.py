"""Supervised warm-start on expert demonstrations (then GRPO with --model runs/<name>).

    python launch/sft.py --env sudoku --name sft-demo --set sft.num_episodes=200
    python launch/sft.py --env sudoku --name sft-demo2 --set sft.demos=runs/sft-demo/demos
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rl.cli import add_run_arguments, resolve_or_exit, run_stop_exits
from rl.resume import end_process_group, finished, main_process


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--num-episodes", type=int, help="shortcut for --set sft.num_episodes=N")
    parser.add_argument("--resume", action="store_true", help="continue the run from its last checkpoint")
    args = parser.parse_args(argv)
    if args.num_episodes:
        args.overrides.append(f"sft.num_episodes={args.num_episodes}")
    cfg = resolve_or_exit(parser, args, resume=args.resume)
    done = (finished(Path(cfg.output_dir) / cfg.name, cfg.sft.max_steps, cfg.sft.num_train_epochs)
            if args.resume else None)
    if done:  # before torch loads: nothing to train, and final/ and adapter/ stay as they are
        if main_process():
            print(done)
        return 0
    from rl.sft import train_sft

    with run_stop_exits(parser):
        out = train_sft(cfg, resume=args.resume)
    end_process_group()  # the launcher's, under accelerate launch
    if main_process():
        print(f"SFT finished: {out} (train on: python launch/grpo.py --env {cfg.env.name} --model {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
