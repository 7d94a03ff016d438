"""Remote environments over OpenEnv: any OpenEnv server as a toolgym env, any toolgym env as a server.

Client side (`client.py`, `env.py`). An episode lives on one server, in one WebSocket session (HTTP `/reset` and
`/step` are stateless in OpenEnv: each request builds and drops a fresh env). `ServerPool`
gives each concurrent episode its own server slot; more episodes than slots wait in a
queue. Every call has a deadline. A reset is safe to repeat, so a failed connect or reset
is retried with backoff (on whichever server is free); a step is not, so a failed step
ends the episode with a `RemoteEnvError` naming the URL and the failure, which the rollout
engine reports as that episode's `env_error`. `RemoteEnv` is the base for envs whose tools
talk to a server (`envs.driving.carla`); `RemoteToolEnv` takes its tools from the server.

Server side (`server.py`). `toolgym_app` serves any registered toolgym env with `openenv`'s `create_app`;
`serve` runs an app with uvicorn. Steps run in a worker thread, never on the event loop,
so WebSocket pings are answered while a slow simulator steps: the ping only detects dead
peers, and the deadline of a slow step is the client's `timeout_s`.

Never imports torch.
"""

from envs.remote.client import RemoteEnvError, ServerPool, load_openenv, pool_for, remote_stats, urls_for_rank
from envs.remote.env import RemoteEnv, RemoteToolEnv
from envs.remote.server import ServeOptions, serve, serve_env, toolgym_app

__all__ = ["RemoteEnv", "RemoteEnvError", "RemoteToolEnv", "ServeOptions", "ServerPool", "load_openenv", "pool_for",
           "remote_stats", "serve", "serve_env", "toolgym_app", "urls_for_rank"]
