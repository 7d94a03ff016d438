"""Driving reference policies for `CarlaEnv`: a rule-based driver and uniformly random tool calls.

The driver reads the last observation the env keeps (`env.last`: the server's speed,
lane, nearby actors and scene text) and acts at once, since every tool lets half a second
pass. Pedestrians ahead in its lane: brake if the car can stop short of them, else change
into an adjacent lane with fewer pedestrians ahead (the trolley scenarios, where braking
falls short), else brake anyway to hit softer. Someone on the sidewalk or walking across
the road ahead: brake. Nothing ahead: observe.
"""

from __future__ import annotations

import random
import re
from collections import Counter

from envs.base import ToolCall
from envs.driving.carla import CarlaEnv


def _lane_index(name) -> int | None:
    """'lane_1' -> 1; None for a sidewalk or a lane the server did not name."""
    match = re.fullmatch(r"lane_(\d+)", str(name or ""))
    return int(match.group(1)) if match else None


def _is_pedestrian(actor: dict) -> bool:
    kind = str(actor.get("type", ""))
    return "pedestrian" in kind or "walker" in kind  # CARLA names them walker.pedestrian.*


def _ahead_m(actor: dict) -> float:
    """Metres ahead along the road; the straight-line distance when the server gives only that."""
    return float(actor.get("ahead_m", actor.get("distance", 0.0)))


def _lane_count(obs: dict) -> int | None:
    """Lanes on the road, from the scene text ("... (leftmost of 2)"); None if it does not say."""
    match = re.search(r"of (\d+)\)", obs.get("scene_description") or "")
    return int(match.group(1)) if match else None


class CarlaDriver:
    """Brake if that stops the car in time, else swerve into a lane with fewer pedestrians, else brake.

    `horizon_m`: pedestrians farther ahead than this are not a threat yet. `brake_decel`:
    the deceleration (m/s^2) the driver counts on at full brake (the local simulator's wet
    road gives 6). `explore` and `seed` are accepted because evaluation passes them to
    every expert; the driver never looks away in an emergency, and it observes anyway
    when nothing is ahead, so they change nothing.
    """

    MARGIN_M = 3.0  # from the car's centre (where `ahead_m` is measured) past its bonnet, plus slack

    def __init__(self, horizon_m: float = 50.0, brake_decel: float = 6.0, explore: float = 0.0, seed: int = 0):
        if horizon_m <= 0:
            raise ValueError(f"horizon_m must be positive (metres ahead), got {horizon_m!r}")
        if brake_decel <= 0:
            raise ValueError(f"brake_decel must be positive (m/s^2), got {brake_decel!r}")
        self.horizon_m, self.brake_decel = horizon_m, brake_decel

    def __call__(self, env: CarlaEnv) -> ToolCall:
        obs = env.last
        ahead = [a for a in obs.get("nearby_actors") or []
                 if _is_pedestrian(a) and not a.get("hit") and 0 < _ahead_m(a) <= self.horizon_m]
        lane, lanes = _lane_index(obs.get("current_lane")), _lane_count(obs)
        per_lane = Counter(_lane_index(a.get("lane")) for a in ahead)
        if lane is not None and per_lane[lane]:
            nearest = min(_ahead_m(a) for a in ahead if _lane_index(a.get("lane")) == lane)
            stopping_m = (float(obs.get("speed_kmh") or 0.0) / 3.6) ** 2 / (2 * self.brake_decel)
            if stopping_m + self.MARGIN_M < nearest:
                return ToolCall("emergency_stop", {})
            options = [(per_lane[other], direction) for direction, other in (("left", lane - 1), ("right", lane + 1))
                       if other >= 0 and (lanes is None or other < lanes)]
            if options and min(options)[0] < per_lane[lane]:
                return ToolCall("lane_change", {"direction": min(options)[1]})
            return ToolCall("emergency_stop", {})
        crossing = "walking across" in (obs.get("scene_description") or "") or per_lane[None]
        if ahead and crossing:  # someone on the sidewalk or crossing may step into the car's path
            return ToolCall("emergency_stop", {})
        return ToolCall("observe", {})


class CarlaRandom:
    """A uniformly random tool (observe, emergency_stop, lane_change), with a uniformly random direction."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def __call__(self, env: CarlaEnv) -> ToolCall:
        name = self.rng.choice(list(env.tools()))
        args = {"direction": self.rng.choice(["left", "right"])} if name == "lane_change" else {}
        return ToolCall(name, args)
