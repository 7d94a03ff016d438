"""Sweep workers: each takes trials from the study until none is left, and runs each as a subprocess.

While a trial runs, its worker sends the study heartbeats, tails the run's `metrics.jsonl` into
`trial.report` (the objective's metric, or the held-out solve rate for `read: eval`), and stops the run when
the sweep's pruner says so. A run that exits with an error is recorded with the tail of its log and the
sweep goes on.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from rl.sweep import study as st
from rl.sweep.report import objective_value, read_rows, series
from rl.sweep.spec import SweepSpec

POLL_S = 1.0
ERROR_TAIL = 3000  # characters of a failed run's log kept with its trial
_print_lock = threading.Lock()
_running: dict[int, tuple[optuna.Study, optuna.Trial, subprocess.Popen]] = {}  # trial number -> its run


def say(text: str) -> None:
    with _print_lock:
        print(text, flush=True)


def visible_gpus() -> list[str]:
    """The GPUs trials may use: CUDA_VISIBLE_DEVICES when set, else every GPU nvidia-smi lists, else none."""
    import os
    import shutil

    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    return [str(i) for i, line in enumerate(l for l in listed.splitlines() if l.startswith("GPU "))]


def plan_devices(workers: int, gpus_per_trial: int, gpus: list[str]) -> list[list[str] | None]:
    """Each worker's own GPUs (CUDA_VISIBLE_DEVICES of its trials); None for every worker on a CPU machine."""
    if workers < 1 or gpus_per_trial < 1:
        raise ValueError(f"--workers and --gpus-per-trial must be >= 1, got {workers} and {gpus_per_trial}")
    if not gpus:
        return [None] * workers
    if workers * gpus_per_trial > len(gpus):
        raise ValueError(f"--workers {workers} x --gpus-per-trial {gpus_per_trial} needs {workers * gpus_per_trial} "
                         f"GPUs; {len(gpus)} visible ({','.join(gpus)})")
    return [gpus[i * gpus_per_trial:(i + 1) * gpus_per_trial] for i in range(workers)]


def run_sweep(spec: SweepSpec, storage, workers: int, devices: list[list[str] | None], heartbeat: int) -> None:
    """Run `workers` workers in this process, worker i on devices[i], until the study has no trial left."""
    study = st.open_study(spec, storage)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            work(study, spec, devices[i], heartbeat)
        except Exception as e:  # the sweep fails with it (a thread's exception alone would not)
            errors.append(e)
            raise

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)  # wakes up for Ctrl-C
    except KeyboardInterrupt:  # stop the runs and queue their trials again for the next start
        for study_, trial, proc in list(_running.values()):
            st.stop(proc)
            _requeue(study_, trial)
        raise
    if errors:
        raise errors[0]


def work(study: optuna.Study, spec: SweepSpec, devices: list[str] | None, heartbeat: int) -> None:
    while True:
        st.fail_stale(study, 3 * heartbeat)
        step = st.next_step(study, spec)
        if step == "done":
            return
        if step == "wait":  # another worker's trial: it finishes, or it was killed and comes back to the queue
            time.sleep(POLL_S * 2)
            continue
        claimed = st.claim(study, spec)
        if claimed:
            run_trial(study, spec, *claimed, devices=devices, heartbeat=heartbeat)


class Heartbeat:
    """Tells the study that a trial's worker is alive, at most every `interval` seconds."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, interval: int):
        self.study, self.trial, self.interval, self.last = study, trial, interval, 0.0

    def __call__(self) -> None:
        if time.time() - self.last >= self.interval:
            st.beat(self.study, self.trial)
            self.last = time.time()


def run_trial(study: optuna.Study, spec: SweepSpec, trial: optuna.Trial, params: dict, point: int, seed: int,
              devices: list[str] | None, heartbeat: int) -> None:
    """One run: command.sh and trial.log in its folder, the command and folder as user attrs, then the result."""
    name = st.trial_name(point, seed)
    run = spec.out / name
    st.fresh_run_folder(run)
    argv = st.command(spec, params, seed, name, devices)
    line = st.shell_line(argv, devices)
    (run / "command.sh").write_text(f"#!/bin/sh\n# trial {trial.number} of sweep {spec.name}\n{line}\n")
    trial.set_user_attr("run", str(run))
    trial.set_user_attr("command", line)
    say(f"[trial {trial.number}] {name}: {line}")
    started, beat = time.time(), Heartbeat(study, trial, heartbeat)
    proc = st.start(argv, devices, run / "trial.log")
    pruned = watch(study, spec, trial, proc, run, beat)
    if pruned:
        study.tell(trial, state=TrialState.PRUNED)
        say(f"[trial {trial.number}] {name}: pruned at step {pruned}")
        return
    value, error = _result(spec, trial, params, seed, run, proc.returncode, devices, beat)
    if error:
        trial.set_user_attr("error", error)
        study.tell(trial, state=TrialState.FAIL)
        say(f"[trial {trial.number}] {name}: FAILED ({time.time() - started:.0f} s); the end of its log:\n"
            f"{error[-800:]}")
        return
    study.tell(trial, value)
    say(f"[trial {trial.number}] {name}: {spec.objective.describe()} = {value:.4g} ({time.time() - started:.0f} s)")


def wait(study: optuna.Study, trial: optuna.Trial, proc: subprocess.Popen, beat: Heartbeat, each_poll=None) -> int:
    """Wait for a trial's process with heartbeats; `each_poll()` returning nonzero stops it (its value returned).
    An error of the sweep itself stops the process and queues the trial again."""
    _running[trial.number] = (study, trial, proc)
    try:
        while proc.poll() is None:
            beat()
            stopped = each_poll() if each_poll else 0
            if stopped:
                st.stop(proc)
                return stopped
            time.sleep(POLL_S)
        return 0
    except Exception:  # e.g. the storage went away
        st.stop(proc)
        _requeue(study, trial)
        raise
    finally:
        _running.pop(trial.number, None)


def watch(study: optuna.Study, spec: SweepSpec, trial: optuna.Trial, proc: subprocess.Popen, run: Path,
          beat: Heartbeat) -> int:
    """Wait for the run, reporting the metric's new values to Optuna; the step it was pruned at, or 0."""
    metric = spec.objective.metric if spec.objective.read != "eval" else "heldout/solve_rate"
    reported: set[int] = set()

    def report_new(may_prune: bool) -> int:
        for step, value in series(read_rows(run), metric):
            if step not in reported:
                reported.add(step)
                trial.report(value, step)
                if may_prune and spec.pruner and trial.should_prune():
                    return step or -1  # pruned at step 0: still nonzero
        return 0

    pruned = wait(study, trial, proc, beat, lambda: report_new(True))
    if not pruned:
        report_new(False)  # the values logged after the last look
    return pruned


def _result(spec: SweepSpec, trial: optuna.Trial, params: dict, seed: int, run: Path, returncode: int,
            devices: list[str] | None, beat: Heartbeat) -> tuple[float | None, str]:
    """The objective's value, or an error: the tail of the run's log, or why the metric could not be read."""
    log = run / "trial.log"
    if returncode != 0:
        return None, f"exit code {returncode}\n" + log.read_text(errors="replace")[-ERROR_TAIL:]
    if spec.objective.read == "eval":
        return _eval(spec, trial, params, seed, run, devices, beat)
    value = objective_value(read_rows(run), spec.objective)
    if value is None:
        return None, f"{spec.objective.metric!r} is not in {run / 'metrics.jsonl'}"
    return value, ""


def _eval(spec: SweepSpec, trial: optuna.Trial, params: dict, seed: int, run: Path, devices: list[str] | None,
          beat: Heartbeat) -> tuple[float | None, str]:
    """launch/eval.py on the run's final model; its command is appended to command.sh."""
    argv = st.eval_command(spec, params, seed, run)
    with (run / "command.sh").open("a") as f:
        f.write(st.shell_line(argv, devices) + "\n")
    proc = st.start(argv, devices, run / "eval.log")
    wait(trial.study, trial, proc, beat)
    results = sorted((run / "eval").glob("*.json"))
    if proc.returncode != 0 or not results:
        tail = (run / "eval.log").read_text(errors="replace")[-ERROR_TAIL:]
        return None, f"eval exit code {proc.returncode}\n" + tail
    return float(json.loads(results[-1].read_text())[spec.objective.metric]), ""


def _requeue(study: optuna.Study, trial: optuna.Trial) -> None:
    """A trial stopped by Ctrl-C or an error of the sweep itself: closed as FAIL and queued again, as a killed
    one would be."""
    try:
        study.tell(trial, state=TrialState.FAIL)
        st.requeue(study, study._storage.get_trial(trial._trial_id))
    except Exception as e:  # noqa: BLE001 - the storage may be gone too; the heartbeat then does it at the next start
        say(f"[trial {trial.number}] could not queue it again now ({e}); the next start will")
