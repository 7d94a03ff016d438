"""Remote vs local Sudoku: episodes/s at N concurrent episodes, same seeds, same moves.

Both sides replay the same expert move lists (computed first, untimed) from `concurrency`
threads; the remote side talks to one `launch/serve_env.py --env sudoku` process on
loopback over OpenEnv WebSocket sessions. The difference is the cost of the server hop.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import envs
from envs.experts import expert_for
from envs.remote import RemoteToolEnv
from rl.bench import free_port, suite

ROOT = Path(__file__).resolve().parents[2]


def _moves(seed: int, size: int) -> list:
    env = envs.make("sudoku", size=size)
    env.reset(seed=seed)
    expert, moves = expert_for(env, explore=0.0), []
    while not env.terminated:
        moves.append(expert(env))
        env.step(moves[-1])
    return moves


def _play_all(make_env, scripts: dict[int, list], concurrency: int) -> tuple[float, int]:
    """Play every seed's moves from `concurrency` threads, one env each; wall seconds and steps."""
    todo: queue.Queue = queue.Queue()
    for seed in scripts:
        todo.put(seed)
    steps, errors, lock = [0], [], threading.Lock()

    def worker() -> None:
        env = make_env()
        try:
            while True:
                try:
                    seed = todo.get_nowait()
                except queue.Empty:
                    return
                env.reset(seed=seed)
                for move in scripts[seed]:
                    env.step(move)
                assert env.info()["solved"], f"seed {seed} not solved"
                with lock:
                    steps[0] += len(scripts[seed]) + 1
        except Exception as e:  # noqa: BLE001 - re-raised below
            errors.append(e)
        finally:
            env.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started, steps[0]


def _server(port: int, sessions: int, size: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch" / "serve_env.py"), "--env", "sudoku",
                             "--port", str(port), "--max-sessions", str(sessions), "--set", f"size={size}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"sudoku server on port {port} did not start") from None
            time.sleep(0.1)


@suite("remote", options=["episodes", "concurrency", "size"])
def remote(options: dict) -> list[dict]:
    """Remote Sudoku (OpenEnv server on loopback) vs local Sudoku: episodes/s at 16 concurrent episodes."""
    episodes, concurrency, size = int(options.get("episodes", 128)), int(options.get("concurrency", 16)), \
        int(options.get("size", 4))
    scripts = {seed: _moves(seed, size) for seed in range(episodes)}
    port = free_port()
    proc = _server(port, concurrency, size)
    try:
        url = f"http://127.0.0.1:{port}"
        _play_all(lambda: RemoteToolEnv([url], slots=concurrency), {0: scripts[0]}, 1)  # warm up imports
        rows = []
        for mode, make_env in [("local", lambda: envs.make("sudoku", size=size)),
                               ("remote", lambda: RemoteToolEnv([url], slots=concurrency))]:
            seconds, steps = _play_all(make_env, scripts, concurrency)
            rows.append({"mode": mode, "episodes": episodes, "concurrency": concurrency, "steps": steps,
                         "seconds": seconds, "episodes_per_s": episodes / seconds,
                         "ms_per_step_per_episode": 1000 * seconds * concurrency / steps})
    finally:
        proc.kill()
        proc.wait(10)
    local, far = rows
    far["overhead_x"] = local["episodes_per_s"] / far["episodes_per_s"]
    far["added_ms_per_step"] = far["ms_per_step_per_episode"] - local["ms_per_step_per_episode"]
    return rows
