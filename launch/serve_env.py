"""Serve a toolgym env (or any OpenEnv app) as an OpenEnv server: HTTP + WebSocket sessions.

    python launch/serve_env.py --env sudoku --port 8000 --set size=4
    python launch/serve_env.py --app envs.driving.sim:app_factory --port 8001 --set max_sessions=1
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from envs.remote import ServeOptions, serve_env
from rl.config import ConfigError, parse_override


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="", help="a toolgym env name or module:Class")
    parser.add_argument("--app", default="", help="module:function that returns an OpenEnv FastAPI app")
    parser.add_argument("--set", dest="kwargs", action="append", default=[], metavar="KEY=VALUE",
                        help="an env kwarg (with --env) or an app factory kwarg (with --app)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-sessions", type=int, default=16, help="concurrent WebSocket sessions (--env)")
    parser.add_argument("--session-timeout", type=float, default=600.0, help="drop sessions idle this long (s)")
    parser.add_argument("--ping-interval", type=float, default=20.0, help="WebSocket keepalive ping (s)")
    parser.add_argument("--ping-timeout", type=float, default=60.0, help="drop a peer silent this long after a ping")
    args = parser.parse_args(argv)
    try:
        kwargs = dict(parse_override(o) for o in args.kwargs)
        opts = ServeOptions(args.env, args.app, kwargs, args.host, args.port, args.max_sessions,
                            args.session_timeout, args.ping_interval, args.ping_timeout)
        serve_env(opts)
    except (ConfigError, ValueError, TypeError) as e:
        parser.exit(2, f"error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
