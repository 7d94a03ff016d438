"""The whole repository passes `ruff check` under the configuration in pyproject.toml, so lint stays at zero."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None,
                    reason="ruff is not installed (it comes with the dev extra: pip install -e '.[dev]')")
def test_ruff_reports_nothing():
    # --no-cache: a test run writes nothing into the checkout
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            check=False, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, f"ruff check . reported:\n{result.stdout}{result.stderr}"
