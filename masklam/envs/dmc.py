"""DeepMind Control Suite tasks as raw MuJoCo model and data."""

from __future__ import annotations

import numpy as np
from dm_control import suite

from masklam.envs.sim import SimStep, geoms_of_bodies
from masklam.envs.suites import SUITE_STEPS
from masklam.errors import UsageError

DMC_STEPS = SUITE_STEPS["dmc"]

# How far a body of each domain is up: the physics' measure, its value lying at the lowest, and the height its
# tasks call standing (dm_control's _STAND_HEIGHT). hopper's measure is torso above foot, so it goes negative
# when the hopper lies with its foot in the air.
STANDING = {"hopper": ("height", -0.6, 0.6), "walker": ("torso_height", 0.0, 1.2), "humanoid": ("head_height", 0.0, 1.4)}


def _agent_bodies(model) -> set[int]:
    """Bodies of every kinematic tree that an actuator drives.

    An actuator moves a joint; the joint's body belongs to a tree hanging from the world.
    Everything in those trees is the agent; world geoms (floor, targets, arena) and
    unactuated trees (the finger's spinner) are not.
    """
    roots = set()
    for a in range(model.nu):
        joint = int(model.actuator_trnid[a, 0])
        roots.add(int(model.body_rootid[model.jnt_bodyid[joint]]))
    roots.discard(0)
    return {b for b in range(model.nbody) if int(model.body_rootid[b]) in roots}


class DMCSimulator:
    def __init__(self, task: str, camera: str = "") -> None:
        domain, task_name = task.split("-", 1)
        self.domain = domain
        # We count steps ourselves (episode_steps); the suite's own time limit is switched off.
        self._env = suite.load(domain, task_name, task_kwargs={"random": 0, "time_limit": float("inf")})
        physics = self._env.physics
        self.model = physics.model.ptr
        self.data = physics.data.ptr
        self.camera = self._camera_id(camera)
        self.max_steps = DMC_STEPS
        self.fps = round(1.0 / self._env.control_timestep(), 6)
        spec = self._env.action_spec()
        self.action_low = spec.minimum.astype(np.float32)
        self.action_high = spec.maximum.astype(np.float32)
        self.state_names = list(self._env.observation_spec())
        self.state_dim = sum(int(np.prod(spec.shape)) for spec in self._env.observation_spec().values())
        self.agent_geoms = geoms_of_bodies(self.model, _agent_bodies(self.model))
        self.background_geoms = np.zeros(0, dtype=np.int32)  # the floor stays visible, as in the papers
        self._other_tasks: dict = {}  # task name -> its dm_control Task, loaded on first use by reward_of

    def _camera_id(self, camera: str) -> int:
        if camera == "":
            return 0
        if camera.isdigit() and int(camera) < self.model.ncam:
            return int(camera)
        names = [self.model.camera(i).name for i in range(self.model.ncam)]
        if camera in names:
            return names.index(camera)
        raise UsageError(f"camera '{camera}' does not exist in this task: use one of {', '.join(names)} or an index below {self.model.ncam}")

    def _state(self, observation) -> np.ndarray:
        return np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in observation.values()])

    def reset(self, rng: np.random.Generator) -> np.ndarray:
        # The task draws its initial state from its own RandomState; reseed it per episode so an
        # episode depends on its seed alone, not on which worker ran which episodes before.
        self._env.task._random = np.random.RandomState(int(rng.integers(2**31)))
        return self._state(self._env.reset().observation)

    def step(self, action: np.ndarray) -> SimStep:
        timestep = self._env.step(action)
        # dm_control ends an episode early only by a zero discount (a terminal state).
        terminated = timestep.last() and timestep.discount == 0
        return SimStep(self._state(timestep.observation), float(timestep.reward or 0.0), bool(terminated))

    def reward_of(self, task_name: str) -> float:
        """Another task of this domain (e.g. hopper's "stand") scored on the current state: for reward shaping."""
        if task_name not in self._other_tasks:
            domain = self.domain
            if (domain, task_name) not in suite.ALL_TASKS:
                raise UsageError(f"DMC has no task {domain}-{task_name}: use one of {', '.join(t for d, t in suite.ALL_TASKS if d == domain)}")
            other = suite.load(domain, task_name)
            sizes = lambda m: (m.nq, m.nv, m.nu, m.nbody)  # noqa: E731
            if sizes(other.physics.model) != sizes(self._env.physics.model):
                raise UsageError(f"{domain}-{task_name} has another model than this task: pick a task of the same body")
            self._other_tasks[task_name] = other.task
        return float(self._other_tasks[task_name].get_reward(self._env.physics))

    def height_fraction(self) -> float:
        """How far the body is up, 0 at its lowest to 1 at standing height and above: a dense signal for getting up."""
        if self.domain not in STANDING:
            raise UsageError(f"{self.domain} has no standing height: a height bonus is for {', '.join(STANDING)}")
        measure, lowest, standing = STANDING[self.domain]
        return float(np.clip((getattr(self._env.physics, measure)() - lowest) / (standing - lowest), 0.0, 1.0))

    def root_pitch(self) -> float:
        """The body's pitch (its ``rooty`` joint, radians): negative is tipped backwards."""
        try:
            return float(self._env.physics.named.data.qpos["rooty"][0])
        except KeyError:
            raise UsageError(f"{self.domain} has no pitch joint (rooty): backward starts are for hopper, walker and cheetah") from None

    def close(self) -> None:
        self._env.close()
