"""The client side of remote envs: server pools, WebSocket sessions with deadlines and retries, the
event loop they share, and the counters a run logs (`remote_stats`). Never imports torch."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def load_openenv() -> None:
    """Import `openenv.core` without its optional Gradio web UI (2 s of imports, unused here)."""
    if "openenv.core.env_server" in sys.modules or "gradio" in sys.modules or os.environ.get("ENABLE_WEB_INTERFACE"):
        return
    sys.modules["gradio"] = None  # openenv treats a failed gradio import as "no web UI"
    try:
        import openenv.core.env_server  # noqa: F401
    finally:
        del sys.modules["gradio"]


# ---------------------------------------------------------------------------------------
# Errors and the client's event loop


class RemoteEnvError(RuntimeError):
    """A remote env call failed; the message names the server URL and what went wrong."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def _loop() -> asyncio.AbstractEventLoop:
    """One background event loop carries every WebSocket of this process (and answers their pings)."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = asyncio.new_event_loop()
            threading.Thread(target=_LOOP.run_forever, name="toolgym-remote-loop", daemon=True).start()
        return _LOOP


def _run(coro, timeout_s: float) -> Any:
    """Run a coroutine on the client loop; raise TimeoutError once `timeout_s` has passed."""
    future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, max(timeout_s, 0.001)), _loop())
    try:
        return future.result(timeout_s + 2.0)  # wait_for cancels first; this only guards a wedged loop
    except TimeoutError:
        future.cancel()
        raise


# ---------------------------------------------------------------------------------------
# Which server an episode runs on


@dataclass
class PoolStats:
    episodes: int = 0  # episodes that got a server
    failed: int = 0  # episodes that ended with a RemoteEnvError
    retries: int = 0  # connect/reset attempts repeated after a failure
    queued: int = 0  # episodes that had to wait for a free server
    queue_wait_s: float = 0.0


class ServerPool:
    """`slots` sessions on each URL; `acquire` blocks until one is free (or the deadline passes).

    A URL that just failed cools down for `backoff_s` before it is handed out again.
    """

    def __init__(self, urls: list[str], slots: int = 1):
        if not urls:
            raise ValueError("a remote env needs at least one server URL (env.kwargs.urls, or --env-urls URL ...)")
        self.urls = list(dict.fromkeys(urls))
        self.free = {url: slots for url in self.urls}
        self.cool_until = {url: 0.0 for url in self.urls}
        self.capacity = slots * len(self.urls)
        self.busy = 0
        self.stats = PoolStats()
        self._cond = threading.Condition()

    def acquire(self, deadline: float) -> str:
        started = time.monotonic()
        with self._cond:
            waited = False
            while True:
                now = time.monotonic()
                ready = [u for u in self.urls if self.free[u] > 0 and self.cool_until[u] <= now]
                if ready:
                    url = max(ready, key=lambda u: self.free[u])  # spread episodes over servers
                    self.free[url] -= 1
                    self.busy += 1
                    if waited:
                        self.stats.queued += 1
                        self.stats.queue_wait_s += now - started
                    return url
                if now >= deadline:
                    raise RemoteEnvError(f"no server free after waiting {now - started:.1f} s: all {len(self.urls)} "
                                         f"busy or failing ({', '.join(self.urls)})", retryable=False)
                cooling = [t for u, t in self.cool_until.items() if self.free[u] > 0 and t > now]
                waited = True
                self._cond.wait(min([deadline] + cooling) - now)

    def release(self, url: str, failed: bool = False, backoff_s: float = 0.0) -> None:
        with self._cond:
            self.free[url] += 1
            self.busy -= 1
            if failed:
                self.cool_until[url] = time.monotonic() + backoff_s
            self._cond.notify_all()


_POOLS: dict[tuple, ServerPool] = {}
_POOLS_LOCK = threading.Lock()


def pool_for(urls: list[str], slots: int = 1) -> ServerPool:
    """The process-wide pool for this list of servers: env instances of one run share it."""
    key = (tuple(urls), slots)
    with _POOLS_LOCK:
        if key not in _POOLS:
            _POOLS[key] = ServerPool(list(urls), slots)
        return _POOLS[key]


def urls_for_rank(urls: list[str] | str, rank: int, world_size: int) -> list[str]:
    """Data-parallel rank `rank`'s own servers: every `world_size`-th URL from `rank` on.

    Ranks never share a server, so a one-session server is never asked for two episodes.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if world_size <= 1:
        return urls
    if len(urls) < world_size:
        raise ValueError(f"{len(urls)} server URL(s) for {world_size} training processes: each process needs "
                         f"servers of its own, so give at least {world_size} (env.kwargs.urls or --env-urls)")
    return urls[rank::world_size]


def remote_stats() -> dict[str, float]:
    """Counters summed over every pool of this process, for the trainer's metrics."""
    pools = list(_POOLS.values())
    return {name: sum(getattr(p.stats, name) for p in pools) for name in PoolStats.__dataclass_fields__}


# ---------------------------------------------------------------------------------------
# One WebSocket session


@dataclass
class Timing:
    """Deadlines and keepalive for remote calls, in seconds."""

    timeout_s: float = 20.0  # each reset or step; keep it under the rollout's step_timeout_s
    connect_timeout_s: float = 5.0
    queue_timeout_s: float = 600.0  # how long an episode may wait for a free server
    reset_attempts: int = 3
    backoff_s: float = 0.5  # doubled after each failed attempt
    ping_interval_s: float | None = 20.0  # keepalive only: a slow step is bounded by timeout_s
    ping_timeout_s: float | None = 60.0
    close_timeout_s: float = 2.0


_SERVER_ERROR = re.compile(r"Server error: (?P<message>.*) \(code: (?P<code>\w+)\)$", re.DOTALL)


class RemoteSession:
    """An `openenv` WebSocket client bound to one server URL, with deadlines and clear errors."""

    def __init__(self, url: str, timing: Timing):
        load_openenv()
        from openenv.core import GenericEnvClient  # imported here: `envs` must load without openenv

        self.url = url
        self.timing = timing
        self.client = GenericEnvClient(
            base_url=url, connect_timeout_s=timing.connect_timeout_s, message_timeout_s=timing.timeout_s + 1.0,
            websocket_ping_interval_s=timing.ping_interval_s, websocket_ping_timeout_s=timing.ping_timeout_s)

    def reset(self, **kwargs: Any):
        return self._call("reset", lambda: self.client.reset(**kwargs), retryable=True)

    def step(self, payload: dict):
        return self._call("step", lambda: self.client.step(payload), retryable=False)

    def _call(self, what: str, request: Callable, retryable: bool):
        from websockets.exceptions import ConnectionClosed

        async def call():
            return await request()

        timeout = self.timing.timeout_s
        try:
            return _run(call(), timeout)
        except TimeoutError:
            raise RemoteEnvError(f"{self.url}: {what} timed out after {timeout:g} s", retryable) from None
        except ConnectionClosed as e:
            raise RemoteEnvError(f"{self.url}: the server closed the connection during {what} ({e})", retryable) from e
        except (ConnectionError, OSError) as e:
            raise RemoteEnvError(f"{self.url}: cannot reach the server: {e}", retryable=True) from e
        except RuntimeError as e:
            m = _SERVER_ERROR.match(str(e))
            if not m:
                raise
            code, message = m["code"], m["message"]
            if code == "VALIDATION_ERROR":
                raise RemoteActionError(f"{self.url} rejected the action: {message}") from e
            busy = code in ("CAPACITY_REACHED", "FACTORY_ERROR")  # another client holds the server: try again
            raise RemoteEnvError(f"{self.url}: {what} failed: {message} ({code})", retryable=busy) from e

    def close(self, wait: bool = True) -> None:
        async def close():  # the client's calls must be made on the loop that owns its socket
            await self.client.close()

        future = asyncio.run_coroutine_threadsafe(close(), _loop())
        if wait:
            try:
                future.result(self.timing.close_timeout_s)
            except Exception:  # noqa: BLE001 - closing a dead session must not raise
                future.cancel()


class RemoteActionError(RemoteEnvError):
    """The server's action schema rejected an action: the model's mistake, not the server's."""


class _Lease:
    """A server slot and its session; released once, however the episode ends."""

    def __init__(self, pool: ServerPool, url: str, session: RemoteSession):
        self.pool, self.url, self.session = pool, url, session
        self._done = False

    def release(self, failed: bool = False, wait: bool = True) -> None:
        if self._done:
            return
        self._done = True
        # Close before freeing the slot: the server frees its session when the socket closes,
        # and a one-session server would refuse the next client until then.
        self.session.close(wait=wait and not failed)
        self.pool.release(self.url, failed, self.session.timing.backoff_s)


# ---------------------------------------------------------------------------------------
# Remote envs
