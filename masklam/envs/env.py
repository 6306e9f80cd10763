"""A simulated task with distractors that returns, for every frame, RGB, the agent mask and state.

Each frame is rendered twice from one scene: once in colour and once as segmentation. The
segmentation gives the agent mask (pixels of the agent's geoms) and the background pixels
(skybox, and the floor plane for Meta-World) that the background video replaces. Both
renders share the same camera and geoms, so masks stay pixel-aligned under camera shake.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from masklam.data.schema import Feature
from masklam.envs.distractors import CameraShake, ColorDrift, MovingObjects
from masklam.envs.sim import Simulator, disable_costly_visuals
from masklam.envs.spec import EnvSpec, parse_env_id

# A plain int: comparing an image with the pybind enum itself makes numpy compare pixel by pixel in Python.
GEOM = int(mujoco.mjtObj.mjOBJ_GEOM)


@dataclass
class Observation:
    rgb: np.ndarray  # (H, W, 3) uint8, distractors included
    mask: np.ndarray  # (H, W) uint8, 1 exactly on the agent's pixels
    state: np.ndarray  # proprioceptive state, float32
    distractor: dict[str, np.ndarray]  # what the distractors are doing now (for probes)


@dataclass
class Transition:
    observation: Observation
    reward: float
    terminated: bool
    truncated: bool
    info: dict


def make_simulator(spec: EnvSpec) -> Simulator:
    env_id = parse_env_id(spec.env_id)
    if env_id.suite == "dmc":
        from masklam.envs.dmc import DMCSimulator

        return DMCSimulator(env_id.task, spec.render.camera)
    from masklam.envs.metaworld import MetaWorldSimulator

    return MetaWorldSimulator(env_id.task, spec.render.camera)


class DistractingEnv:
    """One task, one camera, one split's background videos; episodes are pure functions of their seed."""

    def __init__(self, spec: EnvSpec, split: str = "train") -> None:
        self.spec = spec
        self.split = split
        self.sim = make_simulator(spec)
        model = self.sim.model
        render = spec.render
        disable_costly_visuals(model, render.shadows, render.multisampling, render.reflections)
        self.max_steps = spec.episode_steps or self.sim.max_steps
        self.action_low, self.action_high = self.sim.action_low, self.sim.action_high

        # Lookup tables from segmentation ids to agent / background, built once.
        self._is_agent = np.zeros(model.ngeom, dtype=bool)
        self._is_agent[self.sim.agent_geoms] = True
        self._is_background_geom = np.zeros(model.ngeom, dtype=bool)
        self._is_background_geom[self.sim.background_geoms] = True

        distractors = spec.distractors
        self._background = None
        if distractors.background:
            from masklam.envs.video import BackgroundVideo, open_video_pools

            self._background = BackgroundVideo(open_video_pools(distractors.videos)[split], render.size)
        self._camera = CameraShake(distractors.camera_scale) if distractors.camera_scale > 0 else None
        self._color = ColorDrift(model, distractors.color_scale) if distractors.color_scale > 0 else None
        self._objects = MovingObjects(distractors.objects) if distractors.objects > 0 else None

        self._renderer = mujoco.Renderer(model, render.size, render.size)
        self._fovy = float(model.cam_fovy[self.sim.camera])
        self._lookat_distance = 1.0
        self._background_frame: np.ndarray | None = None
        self._steps = 0

    # --- what the env's frames contain, for the dataset schema -------------------------------
    def distractor_features(self) -> dict[str, Feature]:
        features = {}
        if self._background is not None:
            features["distractor_bg_video"] = Feature("int32", (), "index of the background video in the split's pool")
            features["distractor_bg_frame"] = Feature("int32", (), "frame index within the background video")
        if self._camera is not None:
            features["distractor_camera"] = Feature("float32", (4,), "camera azimuth, elevation, roll offsets (rad) and zoom factor")
        if self._color is not None:
            features["distractor_agent_color"] = Feature("float32", (3,), "mean RGB offset of the drifting colours over the agent's pixels")
        if self._objects is not None:
            features["distractor_objects"] = Feature("float32", (self._objects.count, 3), "positions of the moving objects (camera frame, half-heights)")
        return features

    # --- episode ------------------------------------------------------------------------------
    def reset(self, seed: int) -> Observation:
        # Independent streams: turning one distractor on never changes another's draws or the physics.
        sim_seq, background_seq, camera_seq, color_seq, objects_seq = np.random.SeedSequence(seed).spawn(5)
        self._state = self.sim.reset(np.random.default_rng(sim_seq))
        self._steps = 0
        if self._background is not None:
            self._background_frame = self._background.reset(np.random.default_rng(background_seq))
        if self._camera is not None:
            self._camera.reset(np.random.default_rng(camera_seq))
        if self._color is not None:
            self._color.reset(np.random.default_rng(color_seq))
        if self._objects is not None:
            self._objects.reset(np.random.default_rng(objects_seq))
        self._lookat_distance = self._measure_lookat_distance()
        return self._observe()

    def step(self, action: np.ndarray) -> Transition:
        result = self.sim.step(np.asarray(action, dtype=np.float64))
        self._state = result.state
        self._steps += 1
        if self._background is not None:
            self._background_frame = self._background.step()
        for distractor in (self._camera, self._color, self._objects):
            if distractor is not None:
                distractor.step()
        truncated = not result.terminated and self._steps >= self.max_steps
        return Transition(self._observe(), result.reward, result.terminated, truncated, result.info)

    # --- rendering ----------------------------------------------------------------------------
    def _measure_lookat_distance(self) -> float:
        """Distance along the camera's axis to the agent: the point camera shake orbits around."""
        self._renderer.update_scene(self.sim.data, camera=self.sim.camera)
        camera = self._renderer.scene.camera[0]
        agent_center = self.sim.data.geom_xpos[self.sim.agent_geoms].mean(axis=0)
        return max(0.1, float(np.dot(agent_center - np.array(camera.pos), np.array(camera.forward))))

    def _observe(self) -> Observation:
        renderer = self._renderer
        renderer.update_scene(self.sim.data, camera=self.sim.camera)
        if self._camera is not None:
            self._camera.apply(renderer.scene, self._lookat_distance)
        if self._objects is not None:
            self._objects.add_to_scene(renderer.scene, self._lookat_distance, self._fovy)
        rgb = renderer.render()
        renderer.enable_segmentation_rendering()
        segmentation = renderer.render()
        renderer.disable_segmentation_rendering()

        object_id, object_type = segmentation[..., 0], segmentation[..., 1]
        is_geom = object_type == GEOM
        geom_id = np.where(is_geom, object_id, 0)
        mask = (is_geom & self._is_agent[geom_id]).astype(np.uint8)
        if self._background is not None:
            background = (object_id == -1) | (is_geom & self._is_background_geom[geom_id])
            rgb[background] = self._background_frame[background]
        return Observation(rgb, mask, self._state, self._distractor_state(geom_id[mask.astype(bool)]))

    def _distractor_state(self, agent_pixel_geoms: np.ndarray) -> dict[str, np.ndarray]:
        """The distractors' states; ``agent_pixel_geoms``: the geom each of the agent's pixels shows."""
        state = {}
        if self._background is not None:
            state["distractor_bg_video"] = np.int32(self._background.video)
            state["distractor_bg_frame"] = np.int32(self._background.frame)
        if self._camera is not None:
            state["distractor_camera"] = self._camera.state()
        if self._color is not None:
            state["distractor_agent_color"] = self._color.seen_state(agent_pixel_geoms)
        if self._objects is not None:
            state["distractor_objects"] = self._objects.state()
        return state

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.sim.close()

    def __enter__(self) -> DistractingEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
