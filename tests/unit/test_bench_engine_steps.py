"""The generation suite's split of engine steps (rl/bench/rollout.py): a step that computes any prompt tokens,
a long prompt's later chunks included, is a prefill step; only the others are decode steps. Fake scheduler
outputs with the fields of vLLM's SchedulerOutput that the split reads."""

from types import SimpleNamespace

from rl.bench.rollout import _EngineSteps

PROMPTS = {"long": 1000, "short": 40}  # prompt tokens of each request


def scheduled(new=(), cached=()):
    """A scheduler step: `new` requests it starts, `cached` (request, tokens computed before the step) it goes on
    with."""
    return SimpleNamespace(scheduled_new_reqs=[SimpleNamespace(req_id=r) for r in new],
                           scheduled_cached_reqs=SimpleNamespace(req_ids=[r for r, _ in cached],
                                                                 num_computed_tokens=[n for _, n in cached]))


class FakeScheduler:
    def __init__(self, plan):
        self.plan = iter(plan)
        self.requests = {r: SimpleNamespace(num_prompt_tokens=n) for r, n in PROMPTS.items()}

    def schedule(self):
        return next(self.plan)


class FakeEngine:
    """An in-process LLMEngine's shape: each step schedules once."""

    def __init__(self, plan):
        self.scheduler = FakeScheduler(plan)
        self.engine_core = SimpleNamespace(engine_core=SimpleNamespace(scheduler=self.scheduler))

    def step(self):
        self.scheduler.schedule()
        return []


def test_later_chunks_of_a_long_prompt_are_prefill_steps():
    plan = [scheduled(new=["long"]),  # its first chunk of 512 tokens
            scheduled(cached=[("long", 512)]),  # the rest of its prompt: nothing new starts, still prefill
            scheduled(cached=[("long", 1000)]),  # decoding
            scheduled(new=["short"], cached=[("long", 1001)]),  # a request joins the decoding one
            scheduled(cached=[("long", 1002), ("short", 40)]),
            scheduled(cached=[("long", 1003), ("short", 20)])]  # preempted and recomputed: prefill again
    engine = FakeEngine(plan)
    steps = _EngineSteps(engine)
    for _ in plan:
        engine.step()
    row = steps.row()
    assert row["engine_steps"] == 6 and row["prefill_steps"] == 4
    assert row["prefill_step_ms"] >= 0 and row["decode_step_ms"] >= 0
    steps.reset()
    assert steps.row()["engine_steps"] == steps.row()["prefill_steps"] == 0
    steps.close()  # the engine's own methods again
    assert "step" not in vars(engine) and "schedule" not in vars(engine.scheduler)
