"""Remote envs: `RemoteEnv`, the base for envs whose tools talk to an OpenEnv server (`envs.driving.carla`),
and `RemoteToolEnv`, which takes its tools from the server's action schema. An episode lives on one server,
in one WebSocket session. Never imports torch."""

from __future__ import annotations

import json
import re
import time
import urllib.request
import weakref
from typing import Any

from envs.base import ToolCall, ToolEnv, ToolError, _coerce
from envs.remote.client import RemoteActionError, RemoteEnvError, RemoteSession, Timing, _Lease, pool_for


class RemoteEnv(ToolEnv):
    """Base for envs whose episodes run on OpenEnv servers.

    `urls` are the servers, `slots` the sessions each one takes at once (1 for CARLA).
    Subclasses call `open_episode(**reset_kwargs)` from `setup` and `remote_step(payload)`
    from their tools; both return `openenv`'s `StepResult` (observation dict, reward, done).
    """

    def __init__(self, urls: list[str] | str, slots: int = 1, timing: Timing | dict | None = None,
                 max_steps: int | None = None, max_invalid: int | None = None, render_mode: str | None = None):
        super().__init__(max_steps=max_steps, max_invalid=max_invalid, render_mode=render_mode)
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
