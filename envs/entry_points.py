"""Load a user's object by "module.path:name" or "path/to/file.py:name" (an env class, a reward).

A file is loaded once per resolved path and kept in `sys.modules` under a stable name, so what it
defines pickles by name like any imported module, and a second spec from the same file reuses it.
Importing such a file runs its registrations too (an env's expert and baseline, beside the env).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType


def load_module(spec: str, kind: str) -> ModuleType:
    """The module part of `spec` ("module.path:name" or "path/to/file.py:name"), imported."""
    module_name = spec.rpartition(":")[0]
    if not module_name:
        raise ValueError(f"bad {kind} path {spec!r}: no module before the ':' (expected 'module.path:name')")
    if module_name.endswith(".py"):
        return _load_file(spec, module_name, kind)
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"bad {kind} path {spec!r}: cannot import module {module_name!r} ({e})") from e
    except Exception as e:  # a syntax error or an exception at the module's top level
        raise ValueError(f"bad {kind} path {spec!r}: module {module_name!r} fails to import: {import_error(e)}") from e


def _load_file(spec: str, path: str, kind: str) -> ModuleType:
    file = Path(path).resolve()
    if not file.is_file():
        raise ValueError(f"bad {kind} path {spec!r}: no file {path!r}")
    name = f"toolgym_file_{file.stem}_{hashlib.sha1(str(file).encode()).hexdigest()[:10]}"  # one module per file
    if name not in sys.modules:
        module_spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # picklable by name, like any imported module
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise ValueError(f"bad {kind} path {spec!r}: {path} fails to import: {import_error(e)}") from e
    return sys.modules[name]


def import_error(e: BaseException) -> str:
    """One line for an exception raised while importing a user's module: where it happened (file, line) and
    what. A syntax error names its own line; another exception the top-level line of the module it came from."""
    if isinstance(e, SyntaxError):
        where = f"{_shown(e.filename)}, line {e.lineno}" if e.filename else ""
        what = f"SyntaxError: {e.msg}"
    else:
        frames = traceback.extract_tb(e.__traceback__)
        own = [f for f in frames if f.name == "<module>" and not f.filename.startswith("<")][:1] or frames[-1:]
        where = f"{_shown(own[-1].filename)}, line {own[-1].lineno}" if own else ""
        what = f"{type(e).__name__}: {e}"
    return " ".join(f"{where}: {what}".removeprefix(": ").split())


def _shown(filename: str) -> str:
    """A file name relative to the current folder where it lies below it."""
    try:
        return str(Path(filename).resolve().relative_to(Path.cwd()))
    except ValueError:
        return filename
