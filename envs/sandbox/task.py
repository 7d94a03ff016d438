"""The base of the strategy envs (2048, Sudoku): the model submits code, the sandbox plays games with it.

The code is checked statically (its function, its imports), then handed to a trusted driver that plays
the games on the trusted side and calls the model's function once per move; the facts of the run
(games won, valid moves, the sandbox's status) become the episode's.
"""

from __future__ import annotations

from collections.abc import Callable

from envs.base import ToolCall, ToolEnv
from envs.sandbox.box import Limits, Sandbox, default_sandbox, extract_code, imports_outside, parse_function


def strategy_facts(result, games: int) -> dict:
    """Episode facts from a sandbox run of a strategy driver (shared by 2048 and Sudoku)."""
    played = result.value if result.ok else []
    moves = sum(g["moves"] for g in played)
    invalid = sum(g["invalid_moves"] for g in played)
    return {"sandbox_status": result.status, "function_works": result.ok and not any(g["error"] for g in played),
            "games_played": len(played), "games_won": sum(g["won"] for g in played),
            "win_rate": sum(g["won"] for g in played) / games,
            "valid_move_fraction": moves / (moves + invalid) if moves + invalid else (0.0 if result.ok else None)}


class StrategyTask(ToolEnv):
    """Shared by the strategy envs: check the code statically, play it in the sandbox, keep the facts."""

    default_max_steps = 2
    entry = "strategy"
    driver = ""
    allowed_imports = ("math", "random", "itertools", "functools", "collections", "heapq", "operator")

    def __init__(self, games: int = 4, wall_s: float = 20.0, max_steps: int | None = None,
                 sandbox: Sandbox | None = None, render_mode: str | None = None):
        super().__init__(max_steps=max_steps, max_invalid=None, render_mode=render_mode)
        self.games, self.limits, self.sandbox = games, Limits(wall_s=wall_s, cpu_s=wall_s), sandbox
        self.result: dict = {}

    def game_seeds(self) -> list[int]:
        return [int(s) for s in self.np_random.integers(2**31, size=self.games)]

    def driver_args(self) -> dict:
        raise NotImplementedError

    @staticmethod
    def blank() -> dict:
        """The facts of an episode whose code never ran (nothing submitted, or rejected unrun)."""
        return {"submitted": False, "function_works": False, "forbidden_imports": 0, "win_rate": 0.0,
                "games_played": 0, "games_won": 0, "valid_move_fraction": None, "sandbox_status": "not run"}

    def play(self, code: str) -> str:
        code = extract_code(code)
        problem = parse_function(code, self.entry)
        forbidden = imports_outside(code, self.allowed_imports)
        self.result = {**self.blank(), "submitted": True, "forbidden_imports": len(forbidden)}
        self.terminated = True
        if problem or forbidden:
            allowed = ", ".join(self.allowed_imports)
            return f"Error: {problem or f'imports not allowed: {forbidden} (allowed: {allowed})'}"
        run = (self.sandbox or default_sandbox()).run(code, self.entry, driver=self.driver, limits=self.limits,
                                                      driver_args=self.driver_args(),
                                                      allowed_imports=self.allowed_imports)
        self.result.update(strategy_facts(run, self.games))
        if not run.ok:
            return f"Your strategy failed ({run.status}): {run.error}"
        self.step_reward += self.result["win_rate"]
        return f"Won {self.result['games_won']} of {self.games} games:\n" + "\n".join(map(str, run.value))

    def on_text(self, text: str) -> str:
        if f"def {self.entry}" in text:  # a base model may answer with the code itself
            return self.play(text)
        return super().on_text(text)

    @property
    def solved(self) -> bool:
        return self.result.get("games_won", 0) == self.games

    def facts(self) -> dict:
        return dict(self.result)


class SubmitSource:
    """A policy that submits one fixed source string; a strategy env plays it in the sandbox (one turn)."""

    def __init__(self, source: str):
        self.source = source

    def __call__(self, env) -> ToolCall:
        return ToolCall("submit", {"code": self.source})


def submission_policies(expert_source: str, random_source: Callable[[int], str]) -> tuple[Callable, Callable]:
    """A strategy env's expert (submits `expert_source`) and random policy (submits `random_source(seed)`),
    for `envs.experts.register_policies`. The expert accepts `explore` and `seed` because evaluation passes
    them to every expert; a strategy episode is one submission, so they change nothing."""

    def expert(explore: float = 0.0, seed: int = 0) -> SubmitSource:
        return SubmitSource(expert_source)

    def random(seed: int = 0) -> SubmitSource:
        return SubmitSource(random_source(seed))

    return expert, random
