"""Sudoku: the tool game (`env.py`: `place`, `show_board`), the strategy game whose code plays puzzles in
the sandbox (`strategy.py`, played by the trusted driver `games.py`), the seeded puzzles (`puzzles.py`) and
the reference policies (`expert.py`), registered here beside the envs."""

from envs.experts import register_policies
from envs.sudoku.env import SudokuEnv
from envs.sudoku.expert import SudokuExpert, SudokuRandom, sudoku_strategy_expert, sudoku_strategy_random
from envs.sudoku.strategy import SudokuStrategyEnv

register_policies(SudokuEnv, expert=SudokuExpert, random=SudokuRandom)
register_policies(SudokuStrategyEnv, expert=sudoku_strategy_expert, random=sudoku_strategy_random)

__all__ = ["SudokuEnv", "SudokuExpert", "SudokuRandom", "SudokuStrategyEnv"]
