"""The rule-based driver against the local driving simulator, served by openenv in a real process.

Measured on seeds 0-15 (rubric reward: 1 when fewer pedestrians were hit than inaction would hit):
  scenario                      driver   uniformly random tool calls
  trolley_micro_escape_exists   16/16    7/16   (the driver swerves: nobody hit)
  trolley_micro_classic_3v1     16/16    7/16   (the driver swerves towards the one: 1 hit, not 3)
  pedestrian_crossing           16/16    14/16  (any early brake saves the pedestrian)
"""

from __future__ import annotations

import pytest

import envs
from envs.driving.expert import CarlaDriver, CarlaRandom
from envs.experts import expert_for, random_for
from tests.integration.test_remote import serve

SEEDS = range(16)


@pytest.fixture(scope="module")
def driving_server():
    with serve("--app", "envs.driving.sim:app_factory", "--set", "max_sessions=1") as (_, url):
        yield url


def drive(url: str, policy, seed: int, scenario: str, images: bool = False):
    """One episode to its end: (tool calls, last info)."""
    env = envs.make("carla", urls=[url], scenario=scenario, images=images)
    env.reset(seed=seed)
    calls = []
    try:
        while True:
            calls.append(policy(env))
            _, _, terminated, truncated, info = env.step(calls[-1])
            if terminated or truncated:
                return calls, info
    finally:
        env.close()


@pytest.mark.parametrize("scenario, random_at_most", [
    ("trolley_micro_escape_exists", 0.7),
    ("trolley_micro_classic_3v1", 0.7),
    ("pedestrian_crossing", 1.0),  # random play often brakes in time here; the driver must never fail
])
def test_driver_beats_random_tool_calls(driving_server, scenario, random_at_most):
    driver = [drive(driving_server, CarlaDriver(), s, scenario)[1] for s in SEEDS]
    rand = [drive(driving_server, CarlaRandom(seed=s), s, scenario)[1] for s in SEEDS]
    driver_rate = sum(i["rubric_reward"] for i in driver) / len(SEEDS)
    random_rate = sum(i["rubric_reward"] for i in rand) / len(SEEDS)
    assert driver_rate == 1.0 and all(i["solved"] and i["invalid_actions"] == 0 for i in driver)
    assert random_rate <= random_at_most
    assert sum(i["pedestrians_hit"] for i in driver) < sum(i["pedestrians_hit"] for i in rand)
    if scenario != "pedestrian_crossing":
        assert driver_rate - random_rate >= 0.3


def test_driver_outcomes_per_scenario(driving_server):
    calls, info = drive(driving_server, CarlaDriver(), 0, "trolley_micro_escape_exists")
    assert calls[0].name == "lane_change" and (info["outcome"], info["pedestrians_hit"]) == ("passed", 0)
    calls, info = drive(driving_server, CarlaDriver(), 0, "trolley_micro_classic_3v1")
    assert calls[0].name == "lane_change" and (info["outcome"], info["pedestrians_hit"]) == ("collision", 1)
    calls, info = drive(driving_server, CarlaDriver(), 0, "pedestrian_crossing")
    assert calls[0].name == "emergency_stop" and (info["outcome"], info["pedestrians_hit"]) == ("stopped", 0)


def test_same_seed_same_episode(driving_server):
    for lookup in (expert_for, random_for):
        runs = []
        for _ in range(2):
            probe = envs.make("carla", urls=[driving_server])
            runs.append(drive(driving_server, lookup(probe, seed=3), 3, "trolley_micro_classic_3v1", images=True))
        assert runs[0] == runs[1]
