"""Remote environments over OpenEnv: any OpenEnv server as a toolgym env, any toolgym env as a server.

Client side. An episode lives on one server, in one WebSocket session (HTTP `/reset` and
`/step` are stateless in OpenEnv: each request builds and drops a fresh env). `ServerPool`
gives each concurrent episode its own server slot; more episodes than slots wait in a
queue. Every call has a deadline. A reset is safe to repeat, so a failed connect or reset
is retried with backoff (on whichever server is free); a step is not, so a failed step
ends the episode with a `RemoteEnvError` naming the URL and the failure, which the rollout
engine reports as that episode's `env_error`. `RemoteEnv` is the base for envs whose tools
talk to a server (`envs.carla`); `RemoteToolEnv` takes its tools from the server.

Server side. `toolgym_app` serves any registered toolgym env with `openenv`'s `create_app`;
`serve` runs an app with uvicorn. Steps run in a worker thread, never on the event loop,
so WebSocket pings are answered while a slow simulator steps: the ping only detects dead
peers, and the deadline of a slow step is the client's `timeout_s`.

Never imports torch.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import sys
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from envs.base import ToolCall, ToolEnv, ToolError, _coerce


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


class RemoteEnv(ToolEnv):
    """Base for envs whose episodes run on OpenEnv servers.

    `urls` are the servers, `slots` the sessions each one takes at once (1 for CARLA).
    Subclasses call `open_episode(**reset_kwargs)` from `setup` and `remote_step(payload)`
    from their tools; both return `openenv`'s `StepResult` (observation dict, reward, done).
    """

    def __init__(self, urls: list[str] | str, slots: int = 1, timing: Timing | dict | None = None,
                 max_turns: int | None = None, max_invalid: int | None = None, render_mode: str | None = None):
        super().__init__(max_turns=max_turns, max_invalid=max_invalid, render_mode=render_mode)
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.pool = pool_for(self.urls, slots)
        self.timing = timing if isinstance(timing, Timing) else Timing(**(timing or {}))
        self._lease: _Lease | None = None
        self._reserved: str | None = None  # a server slot taken by `lease()` for the next reset
        self._failure: RemoteEnvError | None = None
        self._finalizer: weakref.finalize | None = None
        self._seed: int | None = None

    @property
    def url(self) -> str | None:
        """The server this episode runs on."""
        return self._lease.url if self._lease else None

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        self._seed = seed
        return super().reset(seed=seed, options=options)

    def step(self, action: ToolCall | dict | str) -> tuple[str, float, bool, bool, dict]:
        self._failure = None
        out = super().step(action)
        if self._failure is not None:  # ToolEnv turns tool exceptions into text; a lost server must end the episode
            raise self._failure
        return out

    def lease(self) -> None:
        """Wait for a free server (up to `timing.queue_timeout_s`) and hold it for the next reset.

        The rollout engine calls this before `reset`, so an episode queued behind busy
        servers starts its reset's deadline only once it has one.
        """
        if self._lease is not None or self._reserved is not None:
            return
        try:
            self._reserved = self.pool.acquire(time.monotonic() + self.timing.queue_timeout_s)
        except RemoteEnvError:
            self.pool.stats.failed += 1
            raise

    def open_episode(self, **reset_kwargs: Any):
        """Start an episode on a free server: a live session is reused, a failed one retried with backoff."""
        t = self.timing
        if self._lease is not None:  # the last episode was cut short: reset it in place
            try:
                return self._lease.session.reset(**reset_kwargs)
            except RemoteEnvError:
                self.end_episode(failed=True)
        errors: list[str] = []
        queue_deadline = time.monotonic() + t.queue_timeout_s
        for attempt in range(t.reset_attempts):
            url, self._reserved = self._reserved, None
            try:
                url = url or self.pool.acquire(queue_deadline)
            except RemoteEnvError:
                self.pool.stats.failed += 1
                raise
            session = RemoteSession(url, t)
            try:
                result = session.reset(**reset_kwargs)
            except RemoteEnvError as e:
                _Lease(self.pool, url, session).release(failed=True)
                errors.append(str(e))
                if not e.retryable:
                    break
                self.pool.stats.retries += attempt + 1 < t.reset_attempts
                time.sleep(t.backoff_s * 2 ** attempt)
                continue
            self._lease = _Lease(self.pool, url, session)
            self._finalizer = weakref.finalize(self, self._lease.release, False, False)
            self.pool.stats.episodes += 1
            return result
        self.pool.stats.failed += 1
        raise RemoteEnvError(f"could not start an episode after {len(errors)} attempt(s): " + "; ".join(errors))

    def remote_step(self, payload: dict, finish: bool = True):
        """Send one action of this episode; a failure ends the episode (a step is not safe to repeat).

        With `finish`, a step that ends the episode also gives the server back.
        """
        if self._lease is None:
            raise RemoteEnvError(f"no remote episode is running (servers: {', '.join(self.urls)}); call reset() first")
        try:
            result = self._lease.session.step(payload)
        except RemoteActionError:
            raise
        except RemoteEnvError as e:
            self.pool.stats.failed += 1
            self.end_episode(failed=True)
            self._failure = e
            raise
        if result.done and finish:
            self.end_episode()
        return result

    def end_episode(self, failed: bool = False) -> None:
        """Give the server back (the rollout may stop an episode before the env does)."""
        if self._reserved is not None:  # leased, never reset
            url, self._reserved = self._reserved, None
            self.pool.release(url)
        if self._lease is not None:
            lease, self._lease = self._lease, None
            if self._finalizer is not None:
                self._finalizer.detach()
            lease.release(failed=failed)

    def close(self) -> None:
        self.end_episode()
        super().close()


class RemoteToolEnv(RemoteEnv):
    """Any OpenEnv server as a toolgym env; its tools come from the server.

    A server made by `toolgym_app` sends its env's tool schemas at reset and its `info`
    with every observation, so a remote Sudoku plays exactly like a local one. Any other OpenEnv
    server gets one tool, named after its action class, whose arguments are the action's
    fields (from the server's `/schema`); its observations are shown as `field: value` lines.
    Pass `tools=` to override what the model is told.
    """

    def __init__(self, urls: list[str] | str, tools: list[dict] | None = None, **kwargs: Any):
        super().__init__(urls, **kwargs)
        self._tools = tools
        self._served_toolgym = False
        self._info: dict = {}

    def tool_schemas(self) -> list[dict]:  # an instance method: the tools are the server's
        if self._tools is None:
            self._tools = [_action_tool(_fetch_schema(self.urls[0], self.timing.connect_timeout_s))]
        return self._tools

    def setup(self, options: dict) -> str:
        result = self.open_episode(seed=self._seed, options=options)
        obs = result.observation
        self._served_toolgym = {"text", "info", "tools"} <= set(obs)
        if self._served_toolgym:
            self._tools = self._tools or obs["tools"]
            self._info = obs["info"]
            return obs["text"]
        self.tool_schemas()
        return _render(obs)

    def step(self, action: ToolCall | dict | str) -> tuple[str, float, bool, bool, dict]:
        if not self._served_toolgym:
            return super().step(action)  # counters here; _dispatch forwards the call
        if self.terminated:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        if isinstance(action, dict):
            action = ToolCall(action.get("name", ""), action.get("arguments") or {})
        payload = {"text": action} if isinstance(action, str) else {"name": action.name, "arguments": action.arguments}
        result = self.remote_step(payload)
        obs = result.observation
        self._info = obs["info"]
        self.terminated = bool(result.done and not obs["truncated"])
        return obs["text"], float(result.reward or 0.0), self.terminated, bool(obs["truncated"]), self._info

    def info(self) -> dict:
        return dict(self._info) if self._served_toolgym else super().info()

    def _dispatch(self, action: ToolCall | dict | str) -> str:
        if isinstance(action, str):
            return self.on_text(action)
        if isinstance(action, dict):
            action = ToolCall(action.get("name", ""), action.get("arguments") or {})
        self.tool_calls += 1
        [schema] = [t["function"] for t in self.tool_schemas()]
        if action.name != schema["name"]:
            self.invalid_actions += 1
            return f"Error: unknown tool {action.name!r}. Available tools: {schema['name']}."
        try:
            payload = _check_arguments(action.arguments, schema["parameters"])
            result = self.remote_step(payload)
        except (ToolError, RemoteActionError) as e:
            self.invalid_actions += 1
            return f"Error: bad arguments for {action.name}: {e}."
        self.step_reward += float(result.reward or 0.0)
        self.terminated = bool(result.done)
        return _render(result.observation)

    def on_text(self, text: str) -> str:
        self.no_tool_calls += 1
        self.invalid_actions += 1
        names = ", ".join(t["function"]["name"] for t in self.tool_schemas())
        return f"Error: no tool call found in your reply. Call one of the tools: {names}."


def _fetch_schema(url: str, timeout_s: float) -> dict:
    http = re.sub(r"^ws", "http", url.rstrip("/")).removesuffix("/ws")
    try:
        with urllib.request.urlopen(f"{http}/schema", timeout=timeout_s) as response:
            return json.load(response)["action"]
    except (OSError, ValueError, KeyError) as e:
        raise RemoteEnvError(f"{url}: cannot read the action schema from {http}/schema: {e}") from e


def _action_tool(action_schema: dict) -> dict:
    """One tool whose parameters are an OpenEnv action model's fields (its JSON schema)."""
    title = action_schema.get("title", "Action")
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", title.removesuffix("Action") or "act").lower()
    properties, required = {}, []
    for key, prop in action_schema.get("properties", {}).items():
        if key == "metadata":
            continue
        variants = prop.get("anyOf", [prop])
        typed = [v for v in variants if v.get("type") not in (None, "null")]
        out = {k: v for k, v in (typed[0] if typed else {}).items() if k in ("type", "enum", "items")}
        if len(typed) < len(variants):
            out["nullable"] = True
        if "description" in prop:
            out["description"] = prop["description"]
        properties[key] = out
        if key in action_schema.get("required", []):
            required.append(key)
    description = " ".join((action_schema.get("description") or f"Send a {title} to the environment.").split())
    return {"type": "function", "function": {"name": name, "description": description,
                                             "parameters": {"type": "object", "properties": properties,
                                                            "required": required}}}


def _check_arguments(arguments: Any, parameters: dict) -> dict:
    if not isinstance(arguments, dict):
        raise ToolError(f"arguments must be an object, got {arguments!r}")
    props = parameters["properties"]
    unknown = sorted(set(arguments) - set(props))
    if unknown:
        raise ToolError(f"unexpected argument(s) {unknown} (accepted: {list(props)})")
    missing = [p for p in parameters["required"] if p not in arguments]
    if missing:
        raise ToolError(f"missing argument(s) {missing}")
    return {k: _coerce(v, props[k], k) if "type" in props[k] else v for k, v in arguments.items()}


def _render(observation: dict) -> str:
    fields = {k: v for k, v in observation.items() if k != "metadata"}
    return "\n".join(f"{k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in fields.items())


# ---------------------------------------------------------------------------------------
# Server side: a toolgym env behind openenv's create_app


def _served_types():
    load_openenv()
    from openenv.core.env_server import Action, Environment, Observation, State
    from pydantic import Field

    class ToolAction(Action):
        """A tool call (`name` and `arguments`) or, with `text`, a reply without a tool call."""

        name: str = Field(default="", description="The tool to call")
        arguments: Any = Field(default_factory=dict, description="The tool's arguments")
        text: str | None = Field(default=None, description="The model's plain-text reply, if no tool call")

    class ToolObservation(Observation):
        text: str = Field(description="What the model reads")
        info: dict[str, Any] = Field(default_factory=dict, description="Episode facts, as env.info()")
        truncated: bool = False
        tools: list[dict] = Field(default_factory=list, description="The env's tool schemas")

    class ServedToolEnv(Environment):
        """One session's toolgym env. Its steps run in the session's worker thread."""

        SUPPORTS_CONCURRENT_SESSIONS = True  # every session builds its own env

        def __init__(self, make_env: Callable[[], ToolEnv]):
            super().__init__()
            self.env = make_env()
            self.episode_id: str | None = None

        def reset(self, seed: int | None = None, episode_id: str | None = None,
                  options: dict | None = None, **kwargs: Any) -> ToolObservation:
            self.episode_id = episode_id
            text, info = self.env.reset(seed=seed, options=options)
            return ToolObservation(text=text, info=_plain(info), tools=self.env.tool_schemas(), reward=0.0)

        def step(self, action: ToolAction, timeout_s: float | None = None, **kwargs: Any) -> ToolObservation:
            call = action.text if action.text is not None else {"name": action.name, "arguments": action.arguments}
            text, reward, terminated, truncated, info = self.env.step(call)
            return ToolObservation(text=text, info=_plain(info), truncated=truncated, reward=reward,
                                   done=terminated or truncated)

        @property
        def state(self) -> State:
            return State(episode_id=self.episode_id, step_count=self.env.turns)

    return ToolAction, ToolObservation, ServedToolEnv


def _plain(value: Any) -> Any:
    """Episode facts as JSON values (numpy scalars become Python numbers)."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def toolgym_app(env: str, env_kwargs: dict | None = None, max_sessions: int = 16,
                session_timeout_s: float | None = 600.0):
    """A FastAPI app serving toolgym env `env` (a registered name or 'module:Class') over OpenEnv.

    At most `max_sessions` WebSocket sessions at once (more are refused with CAPACITY_REACHED);
    a session idle for `session_timeout_s` is dropped, so a vanished client frees its slot.
    """
    import envs

    load_openenv()
    from openenv.core.env_server import ConcurrencyConfig, create_app

    env_cls = envs.resolve(env)
    make_env = functools.partial(env_cls, **(env_kwargs or {}))
    make_env()  # fail now, with the env's own message, on bad kwargs
    ToolAction, ToolObservation, ServedToolEnv = _served_types()
    factory = functools.partial(ServedToolEnv, make_env)
    return create_app(factory, ToolAction, ToolObservation, env_name=env,
                      concurrency_config=ConcurrencyConfig(max_concurrent_envs=max_sessions,
                                                           session_timeout=session_timeout_s))


def serve(app, host: str = "127.0.0.1", port: int = 8000, ping_interval_s: float | None = 20.0,
          ping_timeout_s: float | None = 60.0, log_level: str = "warning") -> None:
    """Run an app with uvicorn until interrupted. Pings detect dead peers only; steps run off the event loop."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, host=host, port=port, ws="websockets-sansio", ws_ping_interval=ping_interval_s,
                                  ws_ping_timeout=ping_timeout_s, ws_max_size=64 * 2**20, log_level=log_level,
                                  timeout_graceful_shutdown=5)).run()


@dataclass
class ServeOptions:
    """What `launch/serve_env.py` asks for: a toolgym env (`env`) or any app factory (`app`)."""

    env: str = ""
    app: str = ""  # "module:function" returning a FastAPI app, e.g. envs.driving_sim:app_factory
    kwargs: dict = field(default_factory=dict)  # env kwargs, or the app factory's kwargs
    host: str = "127.0.0.1"
    port: int = 8000
    max_sessions: int = 16
    session_timeout_s: float | None = 600.0
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 60.0


def serve_env(opts: ServeOptions) -> None:
    """Build the app `opts` names and serve it."""
    import importlib

    if bool(opts.env) == bool(opts.app):
        raise ValueError("give exactly one of --env (a toolgym env) or --app (module:function building an app)")
    if opts.env:
        app = toolgym_app(opts.env, opts.kwargs, opts.max_sessions, opts.session_timeout_s)
    else:
        module, _, name = opts.app.partition(":")
        try:
            factory = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot load app factory {opts.app!r}: {e}") from e
        app = factory(**opts.kwargs)
    serve(app, opts.host, opts.port, opts.ping_interval_s, opts.ping_timeout_s)
