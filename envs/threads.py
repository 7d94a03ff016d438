"""Calls into envs that run in threads, and what must wait for them to end.

The rollout engine (`rl.rollout`) steps envs in a thread pool under a deadline. A step that overruns it, or
that is running when its batch raises, goes on in its thread after the batch is over: ending the env's
episode or closing the env then would pull its server session or its sandbox worker from under that step.
Such work waits instead: `submit` counts an env as in use from the moment a call into it is queued until
the call has returned (or was cancelled before it started), `calling` while a call made in the caller's own
thread runs (a reference policy reading its env to choose a move), and `after_calls` queues work for the
moment the last call ends, when no thread is using the env any more. Never imports torch.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)


class _Calls:
    """One env's calls that are not over yet, and the work waiting for them to end."""

    def __init__(self):
        self.running = 0
        self.waiting: list[Callable[[], Any]] = []


_lock = threading.Lock()
_calls: dict[int, _Calls] = {}  # by id(env), while a call into that env is not over


def _call_begins(env: Any) -> None:
    with _lock:
        _calls.setdefault(id(env), _Calls()).running += 1


def submit(pool: Executor, env: Any, fn: Callable[[], Any]) -> Future:
    """`pool.submit(fn)`, where `fn` calls into `env`: the env counts as in use until the call is over."""
    _call_begins(env)
    try:
        future = pool.submit(fn)
    except BaseException:
        _call_over(env)
        raise
    future.add_done_callback(lambda _, env=env: _call_over(env))  # keeps `env` (and so its id) alive till then
    return future


@contextmanager
def calling(env: Any) -> Iterator[None]:
    """The body calls into `env` in this thread: the env counts as in use until the body is over."""
    _call_begins(env)
    try:
        yield
    finally:
        _call_over(env)


def after_calls(env: Any, fn: Callable[[], Any]) -> bool:
    """Queue `fn` to run once every call into `env` is over, in the thread whose call ends last, right after it
    (what `fn` raises then is logged: nobody waits for it). False, with nothing queued, when no call is running
    or queued: the caller runs `fn` itself."""
    with _lock:
        calls = _calls.get(id(env))
        if calls is None:
            return False
        calls.waiting.append(fn)
        return True


def _call_over(env: Any) -> None:
    with _lock:
        calls = _calls[id(env)]
        calls.running -= 1
        if calls.running:
            return
        del _calls[id(env)]
    for fn in calls.waiting:
        try:
            fn()
        except Exception:  # logged: the call that ended is not the one that failed
            log.exception("%s() of a %s env, run once the last call into it in a thread ended, failed",
                          getattr(fn, "__name__", repr(fn)), type(env).__name__)
