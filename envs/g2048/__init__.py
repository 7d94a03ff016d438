"""2048: the tool game (`env.py`: `move`) and the strategy game whose code plays full games in the sandbox,
the rules (`rules.py`, stdlib only: also the trusted driver) and the reference policies (`expert.py`),
registered here beside the envs."""

from envs.experts import register_policies
from envs.g2048.env import Game2048Env, Game2048StrategyEnv
from envs.g2048.expert import Game2048Expert, Game2048Random, game2048_strategy_expert, game2048_strategy_random

register_policies(Game2048Env, expert=Game2048Expert, random=Game2048Random)
register_policies(Game2048StrategyEnv, expert=game2048_strategy_expert, random=game2048_strategy_random)

__all__ = ["Game2048Env", "Game2048Expert", "Game2048Random", "Game2048StrategyEnv"]
