"""Research sweeps on Optuna: every point of a space, with every seed, as an ordinary launch/grpo.py run.

    python launch/sweep.py configs/sweeps/sudoku-lr-credit.yaml --dry-run      # the trials and their commands
    python launch/sweep.py configs/sweeps/sudoku-lr-credit.yaml --workers 4 --gpus-per-trial 2
    python launch/sweep.py configs/sweeps/sudoku-lr-credit.yaml --storage postgresql://host/sweeps  # each machine
    python launch/sweep.py --report runs/sudoku-lr-credit                        # results.md/.csv, plots

Trials run in runs/<sweep>/<trial>/; the study lives in runs/<sweep>/study.db unless --storage names
another. Running the same command again resumes: finished trials are kept, killed ones run again.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rl.sweep.spec import SweepError, SweepSpec, load_sweep


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", nargs="?", help="sweep file (configs/sweeps/*.yaml)")
    parser.add_argument("--report", metavar="SWEEP_DIR", help="write the results table and plots of runs/<sweep>")
    parser.add_argument("--workers", type=int, default=1, help="trials run at once on this machine (default 1)")
    parser.add_argument("--gpus-per-trial", type=int, default=1, help="GPUs of each worker's trials (default 1)")
    parser.add_argument("--storage", metavar="URL",
                        help="Optuna storage shared by workers on several machines: an RDB URL (postgresql://..., "
                             "mysql://..., sqlite:///...) or a journal file path (default: <sweep dir>/study.db)")
    parser.add_argument("--heartbeat", type=int, default=30, metavar="S",
                        help="seconds between a running trial's heartbeats; a trial silent for 3x this long was "
                             "killed and runs again (default 30)")
    parser.add_argument("--dry-run", action="store_true", help="list the trials and their commands; run nothing")
    args = parser.parse_args(argv)
    if bool(args.sweep) == bool(args.report):
        parser.error("give a sweep file, or --report runs/<sweep>")
    if args.report:
        return report(parser, args)
    from rl.sweep.worker import plan_devices, visible_gpus

    try:
        spec = load_sweep(args.sweep)
        devices = plan_devices(args.workers, args.gpus_per_trial, visible_gpus())
        if args.heartbeat < 1:
            raise ValueError(f"--heartbeat must be >= 1 second, got {args.heartbeat}")
    except (SweepError, ValueError) as e:
        parser.exit(2, f"error: {' '.join(str(e).split())}\n")  # one line, however the message was wrapped
    if args.dry_run:
        print(dry_run(spec, devices[0]), end="")
        return 0
    keep_sweep_file(parser, spec)
    from rl.sweep.study import open_storage
    from rl.sweep.worker import run_sweep

    run_sweep(spec, open_storage(args.storage, spec.out, args.heartbeat), args.workers, devices, args.heartbeat)
    storage = f" --storage {args.storage}" if args.storage else ""
    print(f"sweep {spec.name}: no trial left; the table and plots: python launch/sweep.py --report {spec.out}{storage}")
    return 0


def keep_sweep_file(parser: argparse.ArgumentParser, spec: SweepSpec) -> None:
    """The sweep's file beside its runs (what --report reads); a changed file under a started sweep's name is
    refused, since its finished trials belong to the old one."""
    spec.out.mkdir(parents=True, exist_ok=True)
    kept, text = spec.out / "sweep.yaml", spec.path.read_text()
    if kept.exists() and kept.read_text() != text:
        parser.exit(2, f"error: {kept} holds another version of {spec.path}: a started sweep's file cannot change "
                       f"(give the new one another name:)\n")
    fd, tmp = tempfile.mkstemp(prefix=".sweep.yaml.", dir=kept.parent)  # whole or absent for a worker beside it
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, kept)
    finally:
        Path(tmp).unlink(missing_ok=True)


def dry_run(spec: SweepSpec, devices) -> str:
    from rl.sweep.study import command, shell_line, trial_name

    lines = [(f"sweep {spec.name}: {spec.space_kind} over {', '.join(spec.keys)}; seeds {spec.seeds}; "
              f"objective {spec.objective.describe()} ({spec.objective.direction}); runs in {spec.out}/")]
    if spec.grid:
        points = spec.points()
        lines.append(f"{len(points)} points x {len(spec.seeds)} seeds = {len(points) * len(spec.seeds)} trials")
        for point, params in enumerate(points):
            for seed in spec.seeds:
                name = trial_name(point, seed)
                lines.append(f"{name}: {shell_line(command(spec, params, seed, name, devices), devices)}")
    else:
        sampler = "RandomSampler" if spec.space_kind == "random" else "TPESampler"
        lines.append(f"{spec.trials} points sampled by Optuna's {sampler} x {len(spec.seeds)} seeds = "
                     f"{spec.trials * len(spec.seeds)} trials; each point's values:")
        lines += [f"  {key}: {r.describe()}" for key, r in spec.space.items()]
        sampled = {key: f"<{key}>" for key in spec.space}
        name = trial_name(0, spec.seeds[0])
        lines.append(f"{name}: {shell_line(command(spec, sampled, spec.seeds[0], name, devices), devices)}")
    return "\n".join(lines) + "\n"


def report(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import optuna

    from rl.sweep.report import write_report
    from rl.sweep.study import open_storage

    out = Path(args.report)
    try:
        spec = load_sweep(out / "sweep.yaml", resolve=False, name=out.name)
    except SweepError as e:
        parser.exit(2, f"error: {out} is not a sweep's folder: {e}\n")
    spec.out = out
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=spec.name, storage=open_storage(args.storage, out, args.heartbeat))
    except KeyError:
        parser.exit(2, f"error: no study {spec.name!r} in {args.storage or out / 'study.db'} (pass --storage URL "
                       f"if the sweep used one)\n")
    written = write_report(study, spec, out)
    print(written[0].read_text(), end="")
    print("written: " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
