"""The sandbox's wire: length-prefixed JSON frames over pipes and sockets, and the two ways a call ends badly.

Shared by the caller (`envs.sandbox.box`) and the fork server, which imports it by its bare name (it
runs as a script, importing nothing from the `envs` package)."""

from __future__ import annotations

import json
import os
import struct

MAX_FRAME = 64 << 20
# The trusted drivers, by their path under envs/ (how a run names one: "g2048/rules.py:play_games"). The fork
# server loads each once by its bare file name (so the names must differ) with its folder on the path.
DRIVERS = ("g2048/rules.py", "kernels/tasks.py", "sudoku/games.py")


def check_driver(driver: str) -> None:
    """Refuse a driver that is not one of `DRIVERS` ("path:function"), naming the ones there are."""
    path, _, fn = driver.rpartition(":")
    if path not in DRIVERS or not fn:
        raise ValueError(f"unknown driver {driver!r} (accepted: one of {', '.join(DRIVERS)}, as 'path:function')")


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters (its marker, saying how many were cut, included; so
    clipping twice changes nothing). The child's harness cuts the same way."""
    keep = max(limit - 48, 0)  # room for the marker
    return text if len(text) <= limit else f"{text[:keep]}[... {len(text) - keep} more characters cut]"


class CallError(Exception):
    """The model's function raised, or its reply was unusable."""


class ChildGone(BaseException):
    """The child exited or was killed before answering.

    A BaseException so that a driver's `except Exception` (around one bad move, say)
    cannot swallow the end of the run.
    """


def write_frame(fd: int, obj, dumps=json.dumps) -> None:
    data = dumps(obj).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def read_frame(fd: int):
    head = _read_exact(fd, 4)
    (n,) = struct.unpack(">I", head)
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes exceeds {MAX_FRAME}")
    return json.loads(_read_exact(fd, n))


def _read_exact(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf
