"""Meta-World v3 single tasks as raw MuJoCo model and data, with their scripted experts."""

from __future__ import annotations

import functools
import warnings

import mujoco
import numpy as np

from masklam.envs.sim import SimStep, geoms_of_bodies
from masklam.envs.suites import SUITE_STEPS
from masklam.errors import UsageError

METAWORLD_STEPS = SUITE_STEPS["metaworld"]


@functools.cache
def metaworld_task_names() -> tuple[str, ...]:
    import metaworld

    return tuple(metaworld.ALL_V3_ENVIRONMENTS)


def _subtree(model: mujoco.MjModel, root: int) -> set[int]:
    bodies = set()
    for b in range(model.nbody):
        a = b
        while a != 0 and a != root:
            a = int(model.body_parentid[a])
        if a == root:
            bodies.add(b)
    return bodies


def _roll_upside_down_cameras(model: mujoco.MjModel, data: mujoco.MjData) -> None:
    """Meta-World's corner cameras look at the scene upside down (their up axis points down).

    Rolling the camera by pi about its viewing axis fixes RGB and segmentation renders alike.
    """
    mujoco.mj_forward(model, data)
    half_turn = np.array([0.0, 0.0, 0.0, 1.0])  # pi about the camera's z (viewing) axis
    for c in range(model.ncam):
        up_z = data.cam_xmat[c].reshape(3, 3)[2, 1]
        if model.cam_mode[c] == mujoco.mjtCamLight.mjCAMLIGHT_FIXED and up_z < 0:
            rolled = np.zeros(4)
            mujoco.mju_mulQuat(rolled, model.cam_quat[c].copy(), half_turn)
            model.cam_quat[c] = rolled


class MetaWorldSimulator:
    def __init__(self, task: str, camera: str = "") -> None:
        import metaworld
        from metaworld.policies import ENV_POLICY_MAP

        # MT1's list of 50 goal/object variations, fixed by its seed; episodes draw one each.
        self._benchmark = metaworld.MT1(task, seed=0)
        self._tasks = self._benchmark.train_tasks
        self._env = self._benchmark.train_classes[task]()
        self._env.max_path_length = 10**9  # we count steps ourselves (episode_steps)
        self._scripted = ENV_POLICY_MAP[task]()
        self.model = self._env.model
        self.data = self._env.data
        _roll_upside_down_cameras(self.model, self.data)
        names = [self.model.camera(i).name for i in range(self.model.ncam)]
        camera = camera or "corner"
        if camera not in names:
            raise UsageError(f"camera '{camera}' does not exist in Meta-World: use one of {', '.join(names)}")
        self.camera = names.index(camera)
        self.max_steps = METAWORLD_STEPS
        self.fps = round(1.0 / (self.model.opt.timestep * self._env.frame_skip), 6)
        self.action_low = self._env.action_space.low.astype(np.float32)
        self.action_high = self._env.action_space.high.astype(np.float32)
        self.state_names = ["observation"]
        self.state_dim = int(self._env.observation_space.shape[0])
        # The agent is the moving robot: arm, head and gripper (the bodies under the first arm
        # link). The pedestal and base are static scenery.
        self.agent_geoms = geoms_of_bodies(self.model, _subtree(self.model, self.model.body("right_l0").id))
        # Background = skybox plus the floor plane; the table and task objects stay.
        self.background_geoms = np.array(
            [g for g in range(self.model.ngeom) if self.model.geom_bodyid[g] == 0 and self.model.geom_type[g] == mujoco.mjtGeom.mjGEOM_PLANE],
            dtype=np.int32,
        )
        self._last_obs: np.ndarray | None = None

    def reset(self, rng: np.random.Generator) -> np.ndarray:
        self._env.set_task(self._tasks[int(rng.integers(len(self._tasks)))])
        obs, _ = self._env.reset(seed=int(rng.integers(2**31)))
        self._last_obs = obs
        return obs.astype(np.float32)

    def step(self, action: np.ndarray) -> SimStep:
        obs, reward, terminated, _truncated, info = self._env.step(action)
        self._last_obs = obs
        return SimStep(obs.astype(np.float32), float(reward), bool(terminated), {"success": bool(info.get("success", 0.0))})

    def scripted_action(self) -> np.ndarray:
        """Meta-World's hand-written expert for this task, acting on the last observation."""
        with warnings.catch_warnings():
            # Meta-World warns about its own policies' gains on every call; the actions are clipped anyway.
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            return np.asarray(self._scripted.get_action(self._last_obs), dtype=np.float32)

    def close(self) -> None:
        self._env.close()
