"""Benchmark rows take turns, pass after pass, and each keeps its fastest run (`rl.bench.fastest`)."""

import itertools

from rl import bench
from rl.bench import fastest


def test_rows_take_turns_and_each_keeps_its_fastest_pass(monkeypatch):
    clock = itertools.count()  # perf_counter reads 0, 1, 2, ...: every run takes 1 s
    monkeypatch.setattr(bench.time, "perf_counter", lambda: float(next(clock)))
    order, made = [], {"a": iter([10, 30, 20]), "b": iter([5, 4, 6])}

    def run(name):
        order.append(name)
        return next(made[name]), f"{name}-result-{len(order)}"

    stats = iter(range(100))
    best = fastest({"a": lambda: run("a"), "b": lambda: run("b")}, 3, before=lambda: order.append("reset"),
                   stats=lambda: next(stats))
    assert order == ["reset", "a", "reset", "b"] * 3  # a slow spell slows a pass of every row, not one row
    # its result and stats from that same run, beside every pass's tokens and seconds
    assert best["a"] == (30, 1.0, "a-result-6", 2, [(10, 1.0), (30, 1.0), (20, 1.0)])
    assert best["b"] == (6, 1.0, "b-result-12", 3, [(5, 1.0), (4, 1.0), (6, 1.0)])  # stats read after new bests only


def test_with_swap_every_other_pass_runs_the_rows_in_reverse(monkeypatch):
    clock = itertools.count()
    monkeypatch.setattr(bench.time, "perf_counter", lambda: float(next(clock)))
    order = []
    runs = {name: lambda name=name: (order.append(name), (1, None))[1] for name in ("a", "b")}
    best = fastest(runs, 3, swap=True)
    assert order == ["a", "b", "b", "a", "a", "b"]  # neither always runs first
    assert list(best) == ["a", "b"] and all(len(row[4]) == 3 for row in best.values())  # rows keep their order
