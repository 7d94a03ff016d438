"""The generation suite's split of engine steps (rl/bench/rollout.py): a step whose batch computes any prompt
tokens, a long prompt's later chunks and a recompute included, is a prefill step; only the others are decode
steps. Each step is timed under the batch it waited for, also when the engine schedules one batch ahead (async
scheduling). Fake scheduler outputs with the fields of vLLM's SchedulerOutput that the split reads, and a fake
clock: a prefill batch takes 10 ms, a decode batch 1 ms."""

from types import SimpleNamespace

import pytest

from rl.bench import rollout
from rl.bench.rollout import _EngineSteps

PREFILL_S, DECODE_S = 0.010, 0.001


def batch(new=(), cached=()):
    """A scheduled batch: `new` requests it starts and `cached` ones it goes on with, each (request, tokens)."""
    return SimpleNamespace(scheduled_new_reqs=[SimpleNamespace(req_id=r) for r, _ in new],
                           num_scheduled_tokens=dict(new) | dict(cached), prefill=None)


PLAN = [batch(new=[("long", 512)]),  # the first chunk of a 1,000-token prompt
        batch(cached=[("long", 488)]),  # the rest of it: nothing new starts, still prefill
        batch(cached=[("long", 1)]),  # decoding
        batch(new=[("short", 40)], cached=[("long", 1)]),  # a request joins the decoding one
        batch(cached=[("long", 1), ("short", 1)]),
        batch(cached=[("long", 1), ("short", 20)])]  # preempted and recomputed: prefill again
PREFILLS = [True, True, False, True, False, True]


class FakeScheduler:
    def update_from_output(self, scheduled, output):
        return {}


class FakeEngine:
    """An in-process LLMEngine's shape. Each step schedules a batch; in sync mode it then runs that batch and hands
    its output back to the scheduler, in async mode it hands back the batch scheduled one step before."""

    def __init__(self, plan, clock, ahead: bool):
        self.plan, self.clock, self.ahead, self.pending = iter(plan), clock, ahead, None
        self.scheduler = FakeScheduler()
        self.engine_core = SimpleNamespace(engine_core=SimpleNamespace(scheduler=self.scheduler))

    def step(self):
        scheduled = next(self.plan, None)
        done, self.pending = (self.pending, scheduled) if self.ahead else (scheduled, None)
        if done is not None:
            self.clock[0] += PREFILL_S if done.prefill else DECODE_S
            self.scheduler.update_from_output(done, None)
        return []


@pytest.mark.parametrize("ahead", [False, True], ids=["sync", "async"])
def test_each_step_is_timed_under_the_batch_it_waited_for(monkeypatch, ahead):
    clock = [0.0]
    monkeypatch.setattr(rollout.time, "perf_counter", lambda: clock[0])
    for b, prefill in zip(PLAN, PREFILLS):
        b.prefill = prefill
    engine = FakeEngine(PLAN, clock, ahead)
    steps = _EngineSteps(engine)
    for _ in range(len(PLAN) + ahead):  # async: one more step drains the last batch
        engine.step()
    row = steps.row()
    assert (row["engine_steps"], row["prefill_steps"]) == (len(PLAN) + ahead, 4)
    assert row["prefill_step_ms"] == pytest.approx(1e3 * PREFILL_S)
    # async: the first step only fills the pipeline; it waited for nothing and counts as a decode step
    assert row["decode_step_ms"] == pytest.approx(1e3 * DECODE_S * 2 / (2 + ahead))
    steps.reset()
    assert steps.row()["engine_steps"] == steps.row()["prefill_steps"] == 0
    steps.close()  # the engine's own methods again
    assert "step" not in vars(engine) and "update_from_output" not in vars(engine.scheduler)
