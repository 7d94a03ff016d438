"""The generation suite's split of engine steps (rl/bench/engine_steps.py): a step whose batch computes any prompt
tokens, a long prompt's later chunks and a recompute included, is a prefill step; only the others are decode
steps. Each step is timed under the batch it waited for, also when the engine schedules one batch ahead (async
scheduling), and split by where the step spent it. Fake scheduler outputs with the fields of vLLM's SchedulerOutput
that the split reads, and a fake clock: the device takes 10 ms for a prefill batch, 1 ms for a decode batch."""

from types import SimpleNamespace

import pytest

from rl.bench import engine_steps
from rl.bench.engine_steps import EngineSteps

PREFILL_S, DECODE_S = 0.010, 0.001


def batch(new=(), cached=()):
    """A scheduled batch: `new` requests it starts and `cached` ones it goes on with, each (request, tokens)."""
    tokens = dict(new) | dict(cached)
    return SimpleNamespace(scheduled_new_reqs=[SimpleNamespace(req_id=r) for r, _ in new],
                           num_scheduled_tokens=tokens, total_num_scheduled_tokens=sum(tokens.values()), prefill=None)


PLAN = [batch(new=[("long", 512)]),  # the first chunk of a 1,000-token prompt
        batch(cached=[("long", 488)]),  # the rest of it: nothing new starts, still prefill
        batch(cached=[("long", 1)]),  # decoding
        batch(new=[("short", 40)], cached=[("long", 1)]),  # a request joins the decoding one
        batch(cached=[("long", 1), ("short", 1)]),
        batch(cached=[("long", 1), ("short", 20)])]  # preempted and recomputed: prefill again
PREFILLS = [True, True, False, True, False, True]


# what the engine spends in this process per step on the batch it schedules, and on the batch it waited for
SCHEDULE_S, EXECUTE_S, SAMPLE_S, UPDATE_S, OUTPUTS_S = 0.0001, 0.0003, 0.0001, 0.0002, 0.0003


class FakeScheduler:
    def __init__(self, plan, clock):
        self.plan, self.clock = iter(plan), clock

    def schedule(self):
        self.clock[0] += SCHEDULE_S
        return next(self.plan, None)

    def update_from_output(self, scheduled, output):
        self.clock[0] += UPDATE_S
        return {}


class FakeExecutor:
    def __init__(self, clock):
        self.clock = clock

    def execute_model(self, scheduled, non_block=False):
        self.clock[0] += EXECUTE_S

    def sample_tokens(self, grammar, non_block=False):
        self.clock[0] += SAMPLE_S


class FakeOutputs:
    def __init__(self, clock):
        self.clock = clock

    def process_outputs(self, outputs):
        self.clock[0] += OUTPUTS_S


class FakeEngine:
    """An in-process LLMEngine's shape. Each step schedules a batch and launches it; in sync mode it then waits
    for that batch and hands its output back to the scheduler, in async mode it hands back the batch scheduled one
    step before."""

    def __init__(self, plan, clock, ahead: bool):
        self.clock, self.ahead, self.pending = clock, ahead, None
        self.scheduler, executor = FakeScheduler(plan, clock), FakeExecutor(clock)
        self.engine_core = SimpleNamespace(engine_core=SimpleNamespace(scheduler=self.scheduler,
                                                                       model_executor=executor))
        self.output_processor = FakeOutputs(clock)
        self.vllm_config = SimpleNamespace(compilation_config=SimpleNamespace(max_cudagraph_capture_size=488))

    def step(self):
        core = self.engine_core.engine_core
        scheduled = core.scheduler.schedule()
        if scheduled is not None:
            core.model_executor.execute_model(scheduled, non_block=True)
            core.model_executor.sample_tokens(None, non_block=True)
        done, self.pending = (self.pending, scheduled) if self.ahead else (scheduled, None)
        if done is not None:
            self.clock[0] += PREFILL_S if done.prefill else DECODE_S  # waiting for the device
            core.scheduler.update_from_output(done, None)
            self.output_processor.process_outputs([])
        return []


@pytest.mark.parametrize("ahead", [False, True], ids=["sync", "async"])
def test_each_step_is_timed_under_the_batch_it_waited_for(monkeypatch, ahead):
    clock = [0.0]
    monkeypatch.setattr(engine_steps.time, "perf_counter", lambda: clock[0])
    for b, prefill in zip(PLAN, PREFILLS):
        b.prefill = prefill
    engine = FakeEngine(PLAN, clock, ahead)
    steps = EngineSteps(engine)
    for _ in range(len(PLAN) + ahead):  # async: one more step drains the last batch
        engine.step()
    row = steps.row()
    assert (row["engine_steps"], row["prefill_steps"]) == (len(PLAN) + ahead, 4)
    # the prefill batches' tokens: 512, 488, 41 and 21; only the first larger than the largest CUDA graph (488)
    assert row["prefill_batch_tokens_mean_max"] == [pytest.approx(1062 / 4), 512]
    assert row["prefill_batches_past_cuda_graphs"] == 1
    launch, take = SCHEDULE_S + EXECUTE_S + SAMPLE_S, UPDATE_S + OUTPUTS_S
    ms = pytest.approx
    if not ahead:  # every step launches a batch and waits for it: the parts add up to the step
        assert row["prefill_step_ms"] == ms(1e3 * (launch + PREFILL_S + take))
        assert row["decode_step_ms"] == ms(1e3 * (launch + DECODE_S + take))
        assert row["prefill_phase_ms"] == ms({"schedule": 0.1, "execute": 0.3, "sample": 0.1, "update": 0.2,
                                              "outputs": 0.3, "rest": 1e3 * PREFILL_S})
        assert row["decode_phase_ms"]["rest"] == ms(1e3 * DECODE_S)
    else:
        # steps 2, 3, 5 and 7 wait for the 4 prefill batches; the last finds nothing to launch
        assert row["prefill_step_ms"] == ms(1e3 * (3 * launch + SCHEDULE_S + 4 * (PREFILL_S + take)) / 4)
        # a batch's launch is counted under its own kind, in whichever step launched it: the 4 prefill batches
        # were launched in steps 1, 2, 4 and 6, two of them labelled decode
        assert row["prefill_phase_ms"] == ms({"schedule": 0.1, "execute": 0.3, "sample": 0.1, "update": 0.2,
                                              "outputs": 0.3, "rest": 1e3 * PREFILL_S})
        # the first step only fills the pipeline: it waited for nothing and counts as a decode step; the decode
        # batches (launched in steps 3 and 5) and step 7's empty schedule are spread over those 3 steps
        assert row["decode_step_ms"] == ms(1e3 * (3 * launch + 2 * (DECODE_S + take)) / 3)
        assert row["decode_phase_ms"] == ms({"schedule": 0.1, "execute": 0.2, "sample": 0.2 / 3, "update": 0.4 / 3,
                                             "outputs": 0.2, "rest": 2e3 * DECODE_S / 3})
    steps.reset()
    assert steps.row()["engine_steps"] == steps.row()["prefill_steps"] == 0
    assert steps.row()["prefill_batch_tokens_mean_max"] == [0, 0]
    steps.close()  # the engine's own methods again
    core = engine.engine_core.engine_core
    assert not ({"step"} & set(vars(engine)) or {"schedule", "update_from_output"} & set(vars(core.scheduler))
                or {"execute_model", "sample_tokens"} & set(vars(core.model_executor))
                or "process_outputs" in vars(engine.output_processor))
