"""Sandbox throughput: executions/s from the warm pool vs a plain `subprocess.run` per call.

The baseline is what the Unsloth notebooks would do if they left the training process at
all: start `python -c HARNESS` per execution, exec the code, call the function (or play
the game in that same process), print JSON. It has no isolation; the warm pool adds
namespaces, a chroot, rlimits and per-move IPC, and its goal is >= 10x the baseline. Both
pay for the game itself (~0.6 ms of 2048 rules per random-strategy game), and the pool also
for one round trip per move (~130 a game, ~20 us each with the child on its runner's CPU:
the game state stays on the trusted side) on top of a fresh process and network namespace
per execution (~2.5 ms of CPU on a 2-vCPU VM), which caps the game's ratio well below the
trivial function's. Pool and baseline run in interleaved rounds (`rounds`, medians
reported), so that on a shared machine both see the same load.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from envs.sandbox import Sandbox
from rl.bench import suite

ENVS_DIR = Path(__file__).resolve().parents[2] / "envs" / "g2048"
TRIVIAL = "def f(x):\n    return x + 1"
STRATEGY = ("import random\nrng = random.Random(0)\ndef strategy(board):\n"
            "    return rng.choice(['up', 'down', 'left', 'right'])")
HARNESS = """
import json, sys
sys.path.insert(0, {envs!r})
request = json.loads(sys.stdin.read())
scope = {{}}
exec(request["code"], scope)
if request["game"]:
    from rules import play_game
    print(json.dumps(play_game(scope["strategy"], request["seed"])))
else:
    print(json.dumps(scope["f"](1)))
"""


def _baseline(workload: str, i: int) -> bool:
    request = {"code": STRATEGY if workload == "2048 game" else TRIVIAL, "game": workload == "2048 game", "seed": i}
    out = subprocess.run([sys.executable, "-c", HARNESS.format(envs=str(ENVS_DIR))], input=json.dumps(request),
                         capture_output=True, text=True, timeout=60, check=False)
    return out.returncode == 0


def _pool(box: Sandbox, workload: str, i: int) -> bool:
    if workload == "2048 game":
        r = box.run(STRATEGY, "strategy", driver="g2048/rules.py:play_games", driver_args={"seeds": [i]})
    else:
        r = box.run(TRIVIAL, "f", args=[1])
    return r.ok


def _rate(fn, n: int, threads: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        ok = list(pool.map(fn, range(n)))
    if not all(ok):
        raise RuntimeError(f"{ok.count(False)} of {n} executions failed")
    return n / (time.perf_counter() - start)


@suite("sandbox", options=["n", "baseline_n", "rounds", "threads"])
def sandbox_throughput(options: dict) -> list[dict]:
    """Sandbox executions/s (trivial function, 2048 game) vs subprocess.run per call."""
    n_pool, n_base = int(options.get("n", 300)), int(options.get("baseline_n", 30))
    rounds = int(options.get("rounds", 3))
    rows = []
    with Sandbox() as box:
        isolation = box.isolation["mode"]
        _pool(box, "trivial function", 0)  # start the fork server outside the timing
        for workload in ("trivial function", "2048 game"):
            for threads in sorted({1, int(options.get("threads", 2))}):
                # Interleaved rounds, so that both see the same load on a shared machine; medians.
                pool, base, load = [], [], os.getloadavg()[0]
                for _ in range(rounds):
                    pool.append(_rate(lambda i, w=workload: _pool(box, w, i), n_pool, threads))
                    base.append(_rate(lambda i, w=workload: _baseline(w, i), n_base, threads))
                pool, base = statistics.median(pool), statistics.median(base)
                rows.append({"workload": workload, "threads": threads, "isolation": isolation,
                             "warm_pool_exec_per_s": pool, "subprocess_run_exec_per_s": base,
                             "speedup": pool / base, "goal_10x": "met" if pool / base >= 10 else "missed",
                             "load_1m_before": load})
    return rows
