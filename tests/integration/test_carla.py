"""The CARLA client against the local driving simulator, served by openenv's create_app in a real process."""

from __future__ import annotations

import io
import re
import time

import pytest
from PIL import Image

import envs
from envs.base import ToolCall
from rl.config import RolloutSection
from rl.rollout import run_episodes
from tests.integration.test_remote import serve


@pytest.fixture(scope="module")
def driving_server():
    with serve("--app", "envs.driving.sim:app_factory", "--set", "max_sessions=1") as (_, url):
        yield url


def escape(env) -> str:
    """The lane away from the pedestrians (the scenario mirrors itself by seed)."""
    return "right" if env.last["current_lane"] == "lane_0" else "left"


def drive(env, plan: list[str], seed: int = 0, scenario: str | None = None):
    obs, info = env.reset(seed=seed, options={"scenario": scenario} if scenario else None)
    out = (obs, 0.0, False, False, info)
    for name in plan:
        args = {"direction": escape(env)} if name == "lane_change" else {}
        out = env.step(ToolCall(name, args))
        if out[2] or out[3]:
            break
    return out


@pytest.mark.parametrize("plan, rubric, outcome, hit", [
    (["observe", "lane_change"], 1.0, "passed", 0),  # swerve in time
    (["emergency_stop"], 0.0, "collision", 3),  # braking falls short
    (["observe", "observe", "lane_change"], 1.0, "collision", 2),  # late: spares one, still beats inaction
    (["observe", "observe", "observe"], 0.0, "collision", 3),  # inaction
])
def test_escape_scenario_outcomes_come_from_the_physics(driving_server, plan, rubric, outcome, hit):
    env = envs.make("carla", urls=[driving_server])
    _, reward, terminated, truncated, info = drive(env, plan + ["observe"] * 6)
    assert terminated and not truncated
    assert (info["rubric_reward"], info["outcome"], info["pedestrians_hit"]) == (rubric, outcome, hit)
    assert reward == rubric and info["episode_return"] == rubric and info["solved"] == (rubric == 1.0)
    assert env.url is None  # the one-session server is free again
    env.close()


def test_observations_carry_text_and_a_camera_image(driving_server):
    env = envs.make("carla", urls=[driving_server])
    obs, _ = env.reset(seed=1)
    assert "3 pedestrian(s) in your lane" in obs and "Speed: 60.0 km/h." in obs and "- pedestrian at" in obs
    image = Image.open(io.BytesIO(env.camera_jpeg))
    assert image.format == "JPEG" and image.size == (128, 128)
    obs, *_ = env.step(ToolCall("observe"))
    assert env.last["simulation_time"] == pytest.approx(0.5)  # ten ticks of 0.05 s
    assert env.last_image().size == (128, 128)
    env.close()


def test_braking_saves_the_crossing_pedestrian(driving_server):
    env = envs.make("carla", urls=[driving_server])
    *_, info = drive(env, ["emergency_stop"] + ["observe"] * 6, scenario="pedestrian_crossing")
    assert (info["outcome"], info["pedestrians_hit"], info["rubric_reward"]) == ("stopped", 0, 1.0)
    env.close()


def test_out_of_turns_the_car_drives_on_to_the_end(driving_server):
    env = envs.make("carla", urls=[driving_server], max_steps=1)
    obs, _, _, truncated, info = drive(env, ["observe"])
    assert truncated and "You are out of turns" in obs and "COLLISION" in obs
    assert info["outcome"] == "collision" and info["rubric_reward"] == 0.0 and env.url is None


def test_bad_tool_arguments_never_reach_the_server(driving_server):
    env = envs.make("carla", urls=[driving_server], images=False)
    env.reset(seed=0)
    obs, _, terminated, _, info = env.step(ToolCall("lane_change", {"direction": "up"}))
    assert "must be one of ['left', 'right']" in obs and info["invalid_actions"] == 1 and not terminated
    assert env.last["simulation_time"] == 0.0
    env.close()


def test_unknown_scenario_is_named(driving_server):
    env = envs.make("carla", urls=[driving_server], timing={"reset_attempts": 1})
    with pytest.raises(RuntimeError, match="unknown scenario 'moon_landing' \\(known: trolley_micro_escape_exists"):
        env.reset(seed=0, options={"scenario": "moon_landing"})


OBSERVE = '<tool_call>\n{"name": "observe", "arguments": {}}\n</tool_call>'


def timed_acquires(pool) -> list[float]:
    """Record how long each episode waited for a server."""
    waits, acquire = [], pool.acquire

    def timed(deadline):
        started = time.monotonic()
        url = acquire(deadline)
        waits.append(time.monotonic() - started)
        return url

    pool.acquire = timed
    return waits


def test_more_episodes_than_servers_wait_for_one_without_spending_their_step_deadline(chat, scripted):
    # Six episodes, two one-session servers, steps of 0.2 s, a step deadline of 1 s. The rollout stops every
    # episode after three turns (the car is still driving), so its server must be given back
    # for the next episode to start; the last ones wait for a server far longer than one step
    # may take, and that wait is no step.
    with serve("--app", "envs.driving.sim:app_factory", "--set", "step_delay_s=0.2") as (_, a), \
            serve("--app", "envs.driving.sim:app_factory", "--set", "step_delay_s=0.2") as (_, b):
        episodes = [envs.make("carla", urls=[a, b], ticks_per_tool=2, images=False) for _ in range(6)]
        waits = timed_acquires(episodes[0].pool)
        settings = RolloutSection(max_turns=3, step_timeout_s=1.0)
        trajectories = run_episodes(episodes, list(range(6)), scripted(lambda c, t: OBSERVE), chat, settings)
        assert [t.info["env_error"] for t in trajectories] == [""] * 6
        assert all(t.info["model_turns"] == 3 and t.info["tool_calls"] == 3 for t in trajectories)
        assert len(waits) == 6 and max(waits) > settings.step_timeout_s
        stats = episodes[0].pool.stats
        assert (stats.queued, stats.failed, stats.retries, episodes[0].pool.busy) == (4, 0, 0, 0)


def test_an_episode_that_waits_too_long_for_a_server_fails_alone_and_says_why(chat, scripted):
    # The first episode holds the only server for 3 steps of 0.3 s; the second may wait 0.5 s.
    with serve("--app", "envs.driving.sim:app_factory", "--set", "step_delay_s=0.3") as (_, url):
        episodes = [envs.make("carla", urls=[url], ticks_per_tool=2, images=False,
                              timing={"queue_timeout_s": 0.5}) for _ in range(2)]
        settings = RolloutSection(max_turns=3, step_timeout_s=30.0)
        started = time.monotonic()
        first, second = run_episodes(episodes, [0, 1], scripted(lambda c, t: OBSERVE), chat, settings)
        assert first.info["env_error"] == "" and first.info["model_turns"] == 3
        assert second.info["stop_reason"] == "env_error" and second.info["model_turns"] == 0
        assert re.search(rf"no server free after waiting 0\.\d s: all 1 busy or failing \({re.escape(url)}\)",
                         second.info["env_error"])
        assert time.monotonic() - started < 10 and episodes[0].pool.stats.failed == 1
