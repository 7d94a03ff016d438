"""Driving: the client for CARLA's OpenEnv schema (`carla.py`), a local simulator that serves the same
schema (`sim.py`, `launch/serve_env.py --app envs.driving.sim:app_factory`) and the rule-based driver and
random baseline (`expert.py`), registered here beside the env."""

from envs.driving.carla import CarlaEnv
from envs.driving.expert import CarlaDriver, CarlaRandom
from envs.experts import register_policies

register_policies(CarlaEnv, expert=CarlaDriver, random=CarlaRandom)

__all__ = ["CarlaDriver", "CarlaEnv", "CarlaRandom"]
