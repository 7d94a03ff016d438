"""The engine's steps during a benchmark run, counted and split by phase, on an engine core in this process."""

from __future__ import annotations

import time


def _prefills(scheduled) -> bool:
    """Whether an engine batch computed prompt tokens: it started a request, or went on with one for more than one
    token (a long prompt's later chunks, a preempted request's recompute; a decoding row computes one token a
    step, as there is no speculative decoding here). `scheduled` is the batch's vLLM SchedulerOutput."""
    return bool(scheduled.scheduled_new_reqs) or any(n > 1 for n in scheduled.num_scheduled_tokens.values())


_LAUNCH, _TAKE = ("schedule", "execute", "sample"), ("update", "outputs")


class EngineSteps:
    """The engine's steps during a run: prefill steps, which compute prompt tokens (a turn's prompt joins the
    batch, or a later chunk of a long one is computed; decoding rows ride along), and decode steps, which compute
    none, with their mean milliseconds. A step is labelled by the batch whose output it waited for (the one the
    scheduler is handed back): with async scheduling (vLLM's default on CUDA) a step schedules the next batch
    while it waits for the last one, and a step that only fills that pipeline counts as a decode step.

    Each kind's milliseconds per batch are also split by where they went (`prefill_phase_ms`, `decode_phase_ms`):
    launching the batch, in the step that scheduled it (the scheduler choosing it, `schedule`; the model runner
    preparing it and launching the forward pass, `execute`; and the sampling, `sample`), and taking it back, in the
    step that waited for it (the scheduler's `update`, the request `outputs`, and the `rest`: the wait for the
    device, with async scheduling; without it, `sample` holds that wait). Without async scheduling both are one
    step, and the parts add up to the step."""

    def __init__(self, engine):
        core = engine.engine_core.engine_core
        self.engine, self.scheduler, executor = engine, core.scheduler, core.model_executor
        self.schedule = self._timed("schedule", self.scheduler.schedule)
        self.update = self._timed("update", self.scheduler.update_from_output)
        self.hooks = [(engine, "step", self._step), (self.scheduler, "update_from_output", self._update),
                      (self.scheduler, "schedule", self._schedule)]
        for phase, owner, name in [("execute", executor, "execute_model"), ("sample", executor, "sample_tokens"),
                                   ("outputs", engine.output_processor, "process_outputs")]:
            self.hooks.append((owner, name, self._timed(phase, getattr(owner, name))))
        self.step = engine.step
        compilation = getattr(getattr(engine, "vllm_config", None), "compilation_config", None)
        self.graph_tokens = getattr(compilation, "max_cudagraph_capture_size", None)  # larger ones: no CUDA graph
        for owner, name, hook in self.hooks:
            setattr(owner, name, hook)
        self.reset()

    def reset(self) -> None:
        self.steps, self.prefill_steps, self.prefilling, self.launching = 0, 0, False, "decode"
        self.prefill_tokens: list[int] = []  # each prefill batch's tokens, decoding rows' included
        self.seconds = {kind: dict.fromkeys(("step", *_LAUNCH, *_TAKE, "rest"), 0.0) for kind in ("prefill", "decode")}
        self.now = dict.fromkeys(_LAUNCH + _TAKE, 0.0)  # the step under way's

    def _timed(self, phase: str, method):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.now[phase] += time.perf_counter() - started
        return timed

    def _schedule(self, *args, **kwargs):
        scheduled = self.schedule(*args, **kwargs)
        self.launching = "prefill" if scheduled is not None and _prefills(scheduled) else "decode"
        return scheduled

    def _update(self, scheduled, *args, **kwargs):
        if _prefills(scheduled):
            self.prefilling = True
            self.prefill_tokens.append(scheduled.total_num_scheduled_tokens)
        return self.update(scheduled, *args, **kwargs)

    def _step(self):
        started = time.perf_counter()
        out = self.step()
        seconds = time.perf_counter() - started
        self.steps += 1
        self.prefill_steps += self.prefilling
        waited = self.seconds["prefill" if self.prefilling else "decode"]
        waited["step"] += seconds
        waited["rest"] += seconds - sum(self.now.values())
        for phase in _LAUNCH:
            self.seconds[self.launching][phase] += self.now[phase]
        for phase in _TAKE:
            waited[phase] += self.now[phase]
        self.prefilling, self.launching, self.now = False, "decode", dict.fromkeys(_LAUNCH + _TAKE, 0.0)
        return out

    def row(self) -> dict:
        counts = {"prefill": max(self.prefill_steps, 1), "decode": max(self.steps - self.prefill_steps, 1)}
        mean_ms = {kind: {phase: 1e3 * s / counts[kind] for phase, s in self.seconds[kind].items()}
                   for kind in counts}
        tokens = self.prefill_tokens
        sizes = {"prefill_batch_tokens_mean_max": [sum(tokens) / max(len(tokens), 1), max(tokens, default=0)]}
        if self.graph_tokens is not None:
            sizes["prefill_batches_past_cuda_graphs"] = sum(n > self.graph_tokens for n in tokens)
        return {"engine_steps": self.steps, "prefill_steps": self.prefill_steps, **sizes,
                "prefill_step_ms": mean_ms["prefill"].pop("step"), "decode_step_ms": mean_ms["decode"].pop("step"),
                "prefill_phase_ms": mean_ms["prefill"], "decode_phase_ms": mean_ms["decode"]}

    def close(self) -> None:
        for owner, name, _ in self.hooks:
            delattr(owner, name)  # the instance attributes: the class's methods again
