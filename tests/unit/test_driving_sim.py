"""The 2-D driving simulator without a server: physics, rubric, camera, and the CARLA action schema."""

import base64
import io

import pytest
from PIL import Image
from pydantic import ValidationError

from envs.driving.sim import DT, LANE_WIDTH, MAX_DECEL, SCENARIOS, CarlaAction, DrivingEnvironment, DrivingSim


def run(scenario: str, plan: list[str], seed: int = 0, ticks_per_command: int = 11) -> DrivingSim:
    """Give each command, let `ticks_per_command` ticks pass, then drive on until the scenario ends."""
    sim = DrivingSim(scenario, seed)
    for command in plan:
        if command == "brake":
            sim.set_brake(1.0)
        elif command == "escape":
            sim.change_lane("right" if sim.ego_lane == 0 else "left")
        for _ in range(ticks_per_command):
            sim.tick()
    while not sim.done:
        sim.tick()
    return sim


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("scenario, plan, outcome, hits, reward", [
    ("trolley_micro_escape_exists", [], "collision", 3, 0.0),
    ("trolley_micro_escape_exists", ["brake"], "collision", 3, 0.0),
    ("trolley_micro_escape_exists", ["escape"], "passed", 0, 1.0),
    ("trolley_micro_escape_exists", ["wait", "escape"], "passed", 0, 1.0),
    ("trolley_micro_classic_3v1", ["escape"], "collision", 1, 1.0),
    ("trolley_micro_classic_3v1", ["brake"], "collision", 3, 0.0),
    ("pedestrian_crossing", [], "collision", 1, 0.0),
    ("pedestrian_crossing", ["brake"], "stopped", 0, 1.0),
])
def test_outcomes_follow_from_the_physics(scenario, plan, outcome, hits, reward, seed):
    sim = run(scenario, plan, seed)
    assert (sim.done_reason, sim.hits, sim.rubric_reward()) == (outcome, hits, reward)


def test_inaction_baseline_is_simulated_not_declared():
    assert [DrivingSim(name, 0).inaction_hits for name in SCENARIOS] == [3, 3, 1]


def test_braking_follows_kinematics():
    sim = DrivingSim("trolley_micro_escape_exists", 0)
    v0 = sim.v
    sim.set_brake(1.0)
    for _ in range(10):
        sim.tick()
    assert sim.v == pytest.approx(v0 - 10 * DT * MAX_DECEL)
    assert sim.rubric_reward() is None  # only at the end


def test_lane_change_needs_a_lane_and_forward_speed():
    sim = DrivingSim("trolley_micro_escape_exists", 0)
    away = "left" if sim.ego_lane == 0 else "right"
    sim.change_lane(away)
    assert "no lane to the" in sim.note and sim.target_y is None
    with pytest.raises(ValueError, match="must be 'left' or 'right', got 'up'"):
        sim.change_lane("up")
    sim.change_lane("right" if sim.ego_lane == 0 else "left")
    for _ in range(40):
        sim.tick()
    assert abs(sim.y - sim.lane_center(sim.lane)) < 1e-6 and sim.lane != sim.ego_lane
    stopped = DrivingSim("pedestrian_crossing", 0)
    stopped.v = 0.0
    stopped.change_lane("right" if stopped.ego_lane == 0 else "left")
    y = stopped.y
    stopped.tick()
    assert stopped.y == y  # a car cannot slide sideways


def test_seeds_mirror_and_jitter_the_scene():
    lanes = {DrivingSim("trolley_micro_escape_exists", s).ego_lane for s in range(10)}
    assert lanes == {0, 1}
    a, b = DrivingSim(seed=5), DrivingSim(seed=5)
    assert [(p.x, p.y) for p in a.pedestrians] == [(p.x, p.y) for p in b.pedestrians]
    assert all(abs(p.y - a.y) < LANE_WIDTH / 2 for p in a.pedestrians)


def test_unknown_scenario_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown scenario 'x' \(known: trolley_micro_escape_exists, "):
        DrivingSim("x")


def test_camera_is_a_top_down_jpeg_with_the_car_and_pedestrians():
    sim = DrivingSim(seed=1)
    image = Image.open(io.BytesIO(sim.camera_jpeg(128))).convert("RGB")
    assert image.size == (128, 128)
    pixels = list(image.getdata())
    assert any(b > 150 and r < 100 for r, g, b in pixels)  # the blue car
    assert any(r > 180 and g < 100 and b < 100 for r, g, b in pixels)  # red pedestrians


def test_environment_speaks_the_carla_schema():
    env = DrivingEnvironment()
    obs = env.reset(seed=0, scenario_name="trolley_micro_escape_exists")
    assert obs.camera_image is None and obs.rubric_reward is None and not obs.done
    assert len(obs.nearby_actors) == 3 and obs.nearby_actors[0]["same_lane"]
    obs = env.step(CarlaAction(action_type="capture_image"))
    assert obs.step_number == 0 and Image.open(io.BytesIO(base64.b64decode(obs.camera_image))).format == "JPEG"
    obs = env.step(CarlaAction(action_type="lane_change", lane_direction="right" if env.sim.ego_lane == 0 else "left"))
    assert obs.step_number == 1 and "Changing lane" in obs.scene_description
    while not obs.done:
        obs = env.step(CarlaAction(action_type="observe"))
    assert obs.done_reason == "passed" and obs.rubric_reward == 1.0 and obs.reward == 1.0
    assert env.state.pedestrians_hit == 0 and env.state.inaction_hits == 3


def test_actions_are_validated_by_the_schema():
    with pytest.raises(ValidationError, match="action_type 'fly' is not supported .*supported: observe"):
        CarlaAction(action_type="fly")
    with pytest.raises(ValidationError):
        CarlaAction(action_type="control", throttle=2.0)
