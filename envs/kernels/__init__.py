"""Kernels: the model writes a numeric function, the sandbox checks it against a reference and times it
(`env.py`); the tasks and the trusted driver that runs them (`tasks.py`); the reference policies
(`expert.py`: the reference itself, and a plausible kernel with a typical bug, as no random program exists)."""

from envs.experts import register_policies
from envs.kernels.env import KernelsEnv
from envs.kernels.expert import KernelsExpert, KernelsWrong

register_policies(KernelsEnv, expert=KernelsExpert, random=KernelsWrong)

__all__ = ["KernelsEnv", "KernelsExpert", "KernelsWrong"]
