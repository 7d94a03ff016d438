"""The viewer served on localhost for a run still training: the page asks for the episodes it has not seen
(`/episodes?after=N`) every couple of seconds, and the server reads only what `episodes.jsonl` gained since.

Eval results do not grow; they are served as the static page.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from rl.view import render
from rl.view.sources import EpisodeFile, SourceError, load, run_meta


class LiveRun:
    """A run folder's episodes as they arrive; safe to ask from several request threads."""

    def __init__(self, run: Path):
        self.run = Path(run)
        self.episodes = EpisodeFile(self.run / "episodes.jsonl")
        self.lock = threading.Lock()

    def page(self) -> str:
        return render({"meta": run_meta(self.run), "index": [], "lines": []}, live=True)

    def since(self, after: int, version: int | None = None) -> dict:
        """Episodes after the first `after`; from the start (`reset`) if the file was cut below that, or started
        over since the reader's `version` of it."""
        with self.lock:
            self.episodes.read()
            total = len(self.episodes.lines)
            reset = after > total or (version is not None and version != self.episodes.version)
            start = 0 if reset else after
            return {"total": total, "reset": reset, "version": self.episodes.version,
                    "index": self.episodes.index[start:], "lines": self.episodes.lines[start:]}


def make_server(paths: list[str | Path], port: int = 0, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """An HTTP server for the viewer of `paths` (port 0: any free one; `server.server_address` says which)."""
    paths = [Path(p) for p in paths]
    live = LiveRun(paths[0]) if len(paths) == 1 and paths[0].is_dir() else None
    static = None if live is not None else render(load(paths))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # http.server's name for it
            url = urlparse(self.path)
            if url.path == "/":
                self.reply(200, "text/html; charset=utf-8", live.page() if live else static)
            elif url.path == "/episodes" and live is not None:
                query = parse_qs(url.query)
                after, version = query.get("after", ["0"])[0], query.get("version", [""])[0]
                if not after.isdigit() or not (version.isdigit() or version == ""):
                    self.reply(400, "text/plain", f"after={after!r}, version={version!r}: must be a count of episodes "
                               "and the version a reply gave (integers >= 0; version may be left out)")
                    return
                try:
                    self.reply(200, "application/json",
                               json.dumps(live.since(int(after), int(version) if version else None)))
                except SourceError as e:  # a line the run wrote that is not an episode: the page shows why
                    self.reply(500, "text/plain", str(e))
            else:
                self.reply(404, "text/plain", f"no page {url.path!r} (pages: /, /episodes?after=N)")

        def reply(self, status: int, kind: str, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # one line per poll would bury the training log
            pass

    return ThreadingHTTPServer((host, port), Handler)
