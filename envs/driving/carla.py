"""CARLA driving over OpenEnv: `observe()`, `emergency_stop()` and `lane_change(direction)`.

The car lives on a CARLA OpenEnv server (the public CARLA env, or `envs.driving.sim` for
tests and demos); one server drives one car, so N concurrent episodes need N URLs. Each
tool sends its command, lets the simulation run `ticks_per_tool` ticks (about half a
second), then captures a camera image. The tool result is text (scene description,
speed, nearby actors) for text-only models; the image is kept as `camera_jpeg` for
vision-language models, and every frame is handed out once by `take_images()` (the
rollout engine attaches it to the tool result). The scenario ends with the server's
`rubric_reward`. If the model runs out of turns first, the car drives on without a
driver until the scenario ends, so the reward always reflects what happened on the road.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

from envs.base import ToolCall, tool
from envs.remote.env import RemoteEnv


class CarlaEnv(RemoteEnv):
    default_max_steps = 10

    def __init__(self, urls: list[str] | str, scenario: str = "trolley_micro_escape_exists", ticks_per_tool: int = 10,
                 images: bool = True, max_play_out_ticks: int = 400, **kwargs: Any):
        super().__init__(urls, slots=1, **kwargs)
        self.scenario = scenario
        self.ticks_per_tool = ticks_per_tool
        self.images = images
        self.max_play_out_ticks = max_play_out_ticks
        self.last: dict = {}
        self.camera_jpeg: bytes | None = None
        self._new_frames: list[bytes] = []  # captured, not yet taken

    def setup(self, options: dict) -> str:
        scenario = options.get("scenario", self.scenario)
        self.last, self.camera_jpeg, self._new_frames = {}, None, []
        reset_kwargs = {"scenario_name": scenario} | ({"seed": self._seed} if self._seed is not None else {})
        result = self.open_episode(**reset_kwargs)
        self.last = {**result.observation, "done": result.done, "metadata": result.metadata or {}}
        if self.images:
            self._capture()
        return self.describe()

    # -- tools ---------------------------------------------------------------------------

    @tool
    def observe(self) -> str:
        """Let about half a second pass without a new command, then look at the scene again."""
        return self._drive(None)

    @tool
    def emergency_stop(self) -> str:
        """Brake as hard as possible until the car stops."""
        return self._drive({"action_type": "emergency_stop"})

    @tool
    def lane_change(self, direction: Literal["left", "right"]) -> str:
        """Steer into the next lane to the left or to the right.

        Args:
            direction: "left" or "right".
        """
        return self._drive({"action_type": "lane_change", "lane_direction": direction})

    # -- episode -------------------------------------------------------------------------

    def step(self, action: ToolCall | dict | str) -> tuple[str, float, bool, bool, dict]:
        observation, reward, terminated, truncated, info = super().step(action)
        if truncated and self._lease is not None:  # out of turns: the world does not stop
            self.step_reward = 0.0
            observation += "\nYou are out of turns; the car drives on.\n" + self._drive(None, self.max_play_out_ticks)
            reward += self.step_reward
            self.episode_return += self.step_reward
            info = self.info()
        return observation, reward, terminated, truncated, info

    def _drive(self, command: dict | None, ticks: int | None = None) -> str:
        """Send `command`, let the simulation run, capture an image; the episode ends when the server says so."""
        result = self.remote_step(command, finish=False) if command else None
        for _ in range(ticks or self.ticks_per_tool):
            if result is not None and result.done:
                break
            result = self.remote_step({"action_type": "observe"}, finish=False)
        self.last = {**result.observation, "done": result.done, "metadata": result.metadata or {}}
        if self.images:
            self._capture()
        if result.done:
            self.terminated = True
            self.step_reward += float(self.last.get("rubric_reward") or 0.0)
            self.end_episode()
        return self.describe()

    def _capture(self) -> None:
        image = self.remote_step({"action_type": "capture_image"}, finish=False).observation.get("camera_image")
        self.camera_jpeg = base64.b64decode(image) if image else None
        if self.camera_jpeg is not None:
            self._new_frames.append(self.camera_jpeg)

    def describe(self) -> str:
        obs = self.last
        parts = [obs.get("scene_description") or "", f"Speed: {obs.get('speed_kmh', 0.0):.1f} km/h."]
        actors = obs.get("nearby_actors") or []
        for actor in actors:
            parts.append(f"- {actor.get('type', 'actor')} at {actor.get('distance', '?')} m"
                         + (f" ({actor['lane']})" if "lane" in actor else ""))
        if not actors:
            parts.append("No nearby actors detected.")
        if obs.get("collision_detected"):
            parts.append(f"COLLISION with {obs.get('collided_with') or 'unknown'}!")
        if obs.get("done"):
            parts.append(f"The scenario is over ({obs.get('done_reason') or 'done'}).")
        return "\n".join(p for p in parts if p)

    def last_image(self):
        """The last camera frame as a PIL image, or None."""
        return _image(self.camera_jpeg) if self.camera_jpeg is not None else None

    def take_images(self) -> list:
        """The camera frames captured since the last call, as PIL images, each handed out once."""
        frames, self._new_frames = self._new_frames, []
        return [_image(frame) for frame in frames]

    @property
    def solved(self) -> bool:
        return self.last.get("rubric_reward") == 1.0

    def facts(self) -> dict:
        obs, meta = self.last, self.last.get("metadata", {})
        return {
            "scenario": obs.get("scenario_name", ""),
            "rubric_reward": float(obs.get("rubric_reward") or 0.0),
            "outcome": obs.get("done_reason", ""),
            "collision": bool(obs.get("collision_detected", False)),
            "pedestrians_hit": int(meta.get("pedestrians_hit", int(bool(obs.get("collision_detected"))))),
            "speed_kmh": float(obs.get("speed_kmh", 0.0)),
            "sim_time_s": float(obs.get("simulation_time", 0.0)),
        }


def _image(jpeg: bytes):
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(jpeg))
    image.load()
    return image
