"""The server side: any registered toolgym env served over OpenEnv (`toolgym_app`, `serve`, `serve_env`).
Steps run in a worker thread, never on the event loop, so WebSocket pings are answered while a slow
simulator steps. Never imports torch."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from envs.base import ToolEnv
from envs.remote.client import load_openenv


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
    envs.check_kwargs(env_kwargs or {})
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
    app: str = ""  # "module:function" returning a FastAPI app, e.g. envs.driving.sim:app_factory
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
