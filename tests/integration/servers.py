"""Real server processes on loopback for integration tests."""

import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from rl.bench import free_port  # noqa: F401 - the tests take it from here

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def running(command: list[str], port: int, cwd: Path = ROOT, start_timeout_s: float = 30.0):
    """A server process on 127.0.0.1:`port`, up once /health answers; always killed afterwards."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=log)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + start_timeout_s
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"server exited with {proc.returncode}: {log.read().decode()[-2000:]}")
                try:
                    urllib.request.urlopen(f"{url}/health", timeout=1).read()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"server on {url} did not start in {start_timeout_s} s") from None
                    time.sleep(0.1)
            yield proc, url
        finally:
            proc.kill()  # SIGKILL also ends a SIGSTOPped process
            proc.wait(timeout=10)
