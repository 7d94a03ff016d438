"""The sweep's Optuna study: storage, the trials' queue, one trial's run as a subprocess.

One Optuna trial is one run: a point of the space with one seed. A grid's points x seeds are queued
(`enqueue_trial`) once, by the worker that creates the study; a random/optuna point is sampled by the
study's sampler for the first seed, and its other seeds are queued beside it. Workers, in one process or on
several machines sharing one storage, take queued trials with `study.ask()`, which hands each to one worker.
A killed worker's trial stops sending heartbeats; the next worker to look fails it, and Optuna's
`RetryHeartbeatStaleTrialCallback` queues it again, so running the sweep again re-runs it.
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints each trial's command and result itself
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, since Optuna 2.8
# ask/tell with heartbeats: this module sends them itself while a trial's run goes on
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")

from rl.bench import free_port
from rl.sweep.spec import PRUNERS, SweepSpec

ROOT = Path(__file__).resolve().parents[2]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def open_storage(url: str | None, out: Path, heartbeat: int) -> optuna.storages.BaseStorage:
    """An RDB URL (sqlite:///, postgresql://, mysql://) with heartbeats, or a journal file path; default
    `<out>/study.db`."""
    if url and "://" not in url:  # a journal file, e.g. on a disk every machine mounts
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url))
    if not url:
        out.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{out / 'study.db'}"
    for attempt in range(5):  # two workers creating the same SQLite file race on its tables
        try:
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=3 * heartbeat,
                                                 heartbeat_stale_trial_callback=requeue,
                                                 engine_kwargs={"connect_args": {"timeout": 60}}
                                                 if url.startswith("sqlite") else {})
            break
        except Exception:  # sqlalchemy's errors differ by database
            if attempt == 4:
                raise
            time.sleep(1 + attempt)
    if url.startswith("sqlite"):
        _sqlite_write_transactions(storage.engine)
    return storage


def requeue(study: optuna.Study, trial) -> None:
    """Queue a killed trial again (its point and seed), at most 3 times."""
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)(study, trial)


def _sqlite_write_transactions(engine) -> None:
    """Open every SQLite transaction with BEGIN IMMEDIATE. Python's sqlite3 reads outside transactions, so two
    workers could both read a queued trial as WAITING and both claim it; taking the write lock first makes
    Optuna's claim (read state, then set RUNNING) atomic, as on PostgreSQL or MySQL."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections made before the listeners were added


def _sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    if spec.space_kind == "grid":  # every point is queued (enqueue_trial); GridSampler would stop the study when
        return optuna.samplers.RandomSampler(seed=0)  # a surplus ask is told FAIL outside optimize(), and raise
    return optuna.samplers.RandomSampler() if spec.space_kind == "random" else optuna.samplers.TPESampler()


def _pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    if not spec.pruner:
        return optuna.pruners.NopPruner()
    options = {k: v for k, v in spec.pruner.items() if k != "type"}
    try:
        return getattr(optuna.pruners, PRUNERS[spec.pruner["type"]])(**options)
    except TypeError as e:
        raise ValueError(f"pruner {spec.pruner['type']!r} rejects its options {options}: {e}") from e


def open_study(spec: SweepSpec, storage) -> optuna.Study:
    """Create the study and queue a grid's trials, or join it. Exactly one worker creates it (the storage
    refuses a second study of that name), and only that one queues the grid."""
    kwargs = {"study_name": spec.name, "storage": storage, "sampler": _sampler(spec), "pruner": _pruner(spec)}
    try:
        study = optuna.create_study(direction=spec.objective.direction, **kwargs)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**kwargs)
        _wait_for_queue(study, spec)
        return study
    if spec.grid:
        _queue_grid(study, spec)
    study.set_user_attr("queued", True)
    return study


def _queue_grid(study: optuna.Study, spec: SweepSpec) -> None:
    have = {(t.user_attrs.get("point"), t.user_attrs.get("seed")) for t in study.get_trials(deepcopy=False)}
    for point, params in enumerate(spec.points()):
        for seed in spec.seeds:
            if (point, seed) not in have:
                study.enqueue_trial(params, user_attrs={"point": point, "seed": seed})


def _wait_for_queue(study: optuna.Study, spec: SweepSpec, patience_s: float = 60) -> None:
    """A joining worker waits for the creator to queue the grid; if it never did (killed), queue what is missing."""
    deadline = time.time() + patience_s
    while "queued" not in study.user_attrs and time.time() < deadline:
        time.sleep(0.5)
    if "queued" not in study.user_attrs:
        if spec.grid:
            _queue_grid(study, spec)
        study.set_user_attr("queued", True)


def fail_stale(study: optuna.Study, grace_s: float) -> None:
    """Fail the trials of killed workers and queue them again: Optuna's heartbeat on RDB storages; on a
    journal file, the same from the `heartbeat` time each worker writes into its trial."""
    storage = study._storage
    if isinstance(storage, optuna.storages.RDBStorage):
        optuna.storages.fail_stale_trials(study)
        return
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = t.system_attrs.get("heartbeat") or t.datetime_start.timestamp()
        if time.time() - last > grace_s:
            try:
                if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                    requeue(study, storage.get_trial(t._trial_id))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass


def beat(study: optuna.Study, trial: optuna.Trial) -> None:
    if isinstance(study._storage, optuna.storages.RDBStorage):
        study._storage.record_heartbeat(trial._trial_id)
    else:
        study._storage.set_trial_system_attr(trial._trial_id, "heartbeat", time.time())


def next_step(study: optuna.Study, spec: SweepSpec) -> str:
    """'ask' when a trial is queued or a point is left to sample, 'wait' while others still run (one may have
    been killed and come back to the queue), 'done' when every trial has finished."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials) or _sampled(trials) < spec.trials:
        return "ask"
    return "wait" if any(t.state == TrialState.RUNNING for t in trials) else "done"


def _sampled(trials) -> int:
    """Points sampled so far (random/optuna): first-seed trials, neither retries nor surplus asks."""
    return len(_sampled_numbers(trials))


def _sampled_numbers(trials) -> list[int]:
    return [t.number for t in trials if t.user_attrs.get("sampled") and not t.user_attrs.get("surplus")
            and "failed_trial" not in t.system_attrs]


def claim(study: optuna.Study, spec: SweepSpec) -> tuple[optuna.Trial, dict, int, int] | None:
    """Ask Optuna for the next trial: its point's values, point number and seed. None when the ask came too
    late (another worker took the last queued trial or sampled the last point): that trial is closed as FAIL
    with `surplus` set, never run, and left out of the report."""
    trial = study.ask()
    beat(study, trial)  # at once: a trial without heartbeats is never found stale, even if its worker dies now
    attrs = trial.user_attrs
    if "point" in attrs:  # queued: a grid point, another seed of a sampled point, or a killed trial again
        return trial, suggest(trial, spec), attrs["point"], attrs["seed"]
    trial.set_user_attr("sampled", True)  # first, so that concurrent asks count each other
    earlier = [n for n in _sampled_numbers(study.get_trials(deepcopy=False)) if n < trial.number]
    if spec.grid or len(earlier) >= spec.trials:
        trial.set_user_attr("surplus", True)
        study.tell(trial, state=TrialState.FAIL)
        return None
    params = suggest(trial, spec)
    point, seed = trial.number, spec.seeds[0]
    trial.set_user_attr("point", point)
    trial.set_user_attr("seed", seed)
    for other in spec.seeds[1:]:
        study.enqueue_trial(params, user_attrs={"point": point, "seed": other})
    return trial, params, point, seed


def suggest(trial: optuna.Trial, spec: SweepSpec) -> dict:
    """The trial's values (a queued trial's are fixed; a new one's are sampled)."""
    if spec.grid:
        return {k: trial.suggest_categorical(k, values) for k, values in spec.grid.items()}
    params = {}
    for key, r in spec.space.items():
        if r.kind == "choice":
            params[key] = trial.suggest_categorical(key, r.choices)
        elif r.kind == "int":
            params[key] = trial.suggest_int(key, r.low, r.high, step=r.step or 1, log=r.log)
        else:
            params[key] = trial.suggest_float(key, r.low, r.high, step=r.step, log=r.log)
    return params


def trial_name(point: int, seed: int) -> str:
    return f"p{point:03d}-seed{seed}"


def command(spec: SweepSpec, params: dict, seed: int, name: str, devices: list[str] | None) -> list[str]:
    """The trial's command line, as a user would paste it: `accelerate launch launch/grpo.py ...`, or
    `python launch/grpo.py ...` with `launcher: python`."""
    script = _shown(ROOT / "launch" / "grpo.py")
    if spec.launcher == "python":
        head = [sys.executable, script]
    else:
        accelerate = Path(sys.executable).parent / "accelerate"
        head = ([str(accelerate), "launch"] if accelerate.exists()
                else [sys.executable, "-m", "accelerate.commands.launch"])
        n = len(devices) if devices else 1
        head += ["--num_processes", str(n)]
        head += ["--multi_gpu", "--main_process_port", str(free_port())] if n > 1 else []
        head.append(script)
    return head + spec.run_args(params, seed, name)


def eval_command(spec: SweepSpec, params: dict, seed: int, run: Path) -> list[str]:
    """launch/eval.py on the trial's final model, for `read: eval`."""
    args = spec.run_args(params, seed, "")
    sets = [a for pair in itertools.pairwise(args) if pair[0] == "--set" for a in pair
            if not pair[1].startswith(("output_dir=", "log."))]
    head = ["--env", spec.env] + (["--config", spec.config] if spec.config else [])
    episodes = ["--episodes", str(spec.objective.episodes)] if spec.objective.episodes else []
    return [sys.executable, _shown(ROOT / "launch" / "eval.py"), *head, "--model", str(run), "--label", run.name,
            "--out", str(run / "eval"), *episodes, *sets]


def _shown(path: Path) -> str:
    """A path relative to the current folder when it lies below it (launch/grpo.py), else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def shell_line(argv: list[str], devices: list[str] | None) -> str:
    prefix = f"CUDA_VISIBLE_DEVICES={','.join(devices)} " if devices else ""
    return prefix + shlex.join(argv)


def _libc():
    try:
        import ctypes

        return ctypes.CDLL(None)
    except OSError:
        return None


_LIBC = _libc()  # loaded here: the child between fork and exec must take no lock (workers are threads)


def _die_with_parent() -> None:
    """In the child: be sent SIGTERM when the sweep worker dies (Linux), so a killed sweep leaves no orphan."""
    if _LIBC is not None and sys.platform.startswith("linux"):
        _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start(argv: list[str], devices: list[str] | None, log: Path) -> subprocess.Popen:
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ",".join(devices)} if devices else {}))
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent)  # noqa: PLW1509 - it only calls prctl


def stop(proc: subprocess.Popen) -> None:
    """End the trial's process group (accelerate's workers too): SIGTERM, then SIGKILL after 30 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def fresh_run_folder(run: Path) -> None:
    """A trial run again after its worker was killed starts from an empty folder (only a folder the sweep
    made, with its command.sh, is removed)."""
    if (run / "command.sh").exists():
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
