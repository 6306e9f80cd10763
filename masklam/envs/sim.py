"""What every simulator adapter provides to the distracting environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import mujoco
import numpy as np


@dataclass
class SimStep:
    state: np.ndarray  # proprioceptive state after the step, float32
    reward: float
    terminated: bool  # reached a terminal state (the episode cannot go on)
    info: dict[str, Any] = field(default_factory=dict)


class Simulator(Protocol):
    """A MuJoCo task seen through its raw model and data, so one renderer serves every suite."""

    model: mujoco.MjModel
    data: mujoco.MjData
    camera: int  # id of the camera frames are rendered from
    max_steps: int  # the suite's own episode length
    fps: float  # control steps per simulated second
    action_low: np.ndarray
    action_high: np.ndarray
    state_names: list[str]
    state_dim: int  # size of the proprioceptive state vector
    agent_geoms: np.ndarray  # geom ids that belong to the agent (the mask)
    background_geoms: np.ndarray  # geom ids drawn over by the background video, beside the skybox

    def reset(self, rng: np.random.Generator) -> np.ndarray:
        """Start an episode whose initial state is drawn from ``rng``; return the state."""

    def step(self, action: np.ndarray) -> SimStep: ...

    def close(self) -> None: ...


def geoms_of_bodies(model: mujoco.MjModel, bodies: set[int]) -> np.ndarray:
    return np.array([g for g in range(model.ngeom) if int(model.geom_bodyid[g]) in bodies], dtype=np.int32)


def disable_costly_visuals(model: mujoco.MjModel, shadows: bool, multisampling: bool, reflections: bool) -> None:
    """Shadows, multisampling and reflections cost 4-10x on a CPU renderer; turn them off unless asked."""
    if not shadows:
        model.vis.quality.shadowsize = 0
        model.light_castshadow[:] = 0
    if not multisampling:
        model.vis.quality.offsamples = 0
    if not reflections:
        model.mat_reflectance[:] = 0
