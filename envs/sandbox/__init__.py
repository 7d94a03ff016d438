"""The sandbox for model-written code: `Sandbox` and its limits and results (`box.py`), the fork server
that keeps locked-down processes armed (`forkserver.py`, with `protocol.py`, `isolation.py`, `armed.py`,
and `child.py`, what each child runs), and the base of the envs whose action is code (`task.py`)."""

from envs.sandbox.box import (
                              ALLOW_WEAK_VAR,
                              STATUSES,
                              STDLIB_SAFE,
                              Limits,
                              Result,
                              Sandbox,
                              WeakSandboxRefused,
                              default_sandbox,
                              extract_code,
                              imports_outside,
                              parse_function,
)

__all__ = ["ALLOW_WEAK_VAR", "STATUSES", "STDLIB_SAFE", "Limits", "Result", "Sandbox", "WeakSandboxRefused",
           "default_sandbox", "extract_code", "imports_outside", "parse_function"]
