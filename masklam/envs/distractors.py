"""Visual distractors: camera shake, colour drift and moving objects.

All of them act on rendering only (the camera of the render, material colours, extra geoms
in the render's scene), never on the physics, so an agent acting on state behaves the
same with and without them. Every draw comes from the generator passed to ``reset``.
The background video lives in masklam.envs.video.
"""

from __future__ import annotations

import mujoco
import numpy as np


def _rotate(vector: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues' rotation of ``vector`` about the unit ``axis``."""
    cos, sin = np.cos(angle), np.sin(angle)
    return vector * cos + np.cross(axis, vector) * sin + axis * np.dot(axis, vector) * (1 - cos)


class _BoundedWalk:
    """A random walk with bounded velocity that stays inside [low, high] (velocity zeroed at a wall)."""

    def __init__(self, low: np.ndarray, high: np.ndarray, velocity_std: np.ndarray, max_velocity: np.ndarray) -> None:
        self.low, self.high = low, high
        self.velocity_std, self.max_velocity = velocity_std, max_velocity
        self.value = np.zeros_like(low)
        self.velocity = np.zeros_like(low)

    def reset(self, rng: np.random.Generator) -> None:
        self.value = rng.uniform(self.low, self.high)
        self.velocity = np.zeros_like(self.low)

    def step(self, rng: np.random.Generator) -> None:
        self.velocity = np.clip(self.velocity + rng.normal(0.0, self.velocity_std), -self.max_velocity, self.max_velocity)
        moved = self.value + self.velocity
        hit = (moved < self.low) | (moved > self.high)
        self.velocity[hit] = 0.0
        self.value = np.clip(moved, self.low, self.high)


class CameraShake:
    """Random-walk perturbation of the render camera around its look-at point.

    Parameters follow the Distracting Control Suite: azimuth, elevation and roll within
    +-(pi/2)*scale, velocity std 0.01 (max 0.04) for the angles and (pi/300)*scale (max
    (pi/50)*scale) for roll, zoom in up to 5 % and out up to 15 %.
    """

    ZOOM_IN, ZOOM_OUT = 0.95, 1.15

    def __init__(self, scale: float) -> None:
        angle = np.pi / 2 * scale
        self._walk = _BoundedWalk(
            low=np.array([-angle, -angle, -angle, self.ZOOM_IN]),
            high=np.array([angle, angle, angle, self.ZOOM_OUT]),
            velocity_std=np.array([0.01, 0.01, np.pi / 300 * scale, 0.002]),
            max_velocity=np.array([0.04, 0.04, np.pi / 50 * scale, 0.01]),
        )
        self._rng: np.random.Generator | None = None

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._walk.reset(rng)

    def step(self) -> None:
        self._walk.step(self._rng)

    def state(self) -> np.ndarray:
        """(azimuth, elevation, roll) offsets in radians and the zoom factor."""
        return self._walk.value.astype(np.float32)

    def apply(self, scene: mujoco.MjvScene, lookat_distance: float) -> None:
        azimuth, elevation, roll, zoom = self._walk.value
        for camera in scene.camera:
            forward, up = np.array(camera.forward), np.array(camera.up)
            lookat = np.array(camera.pos) + forward * lookat_distance
            world_up = np.array([0.0, 0.0, 1.0])
            forward, up = _rotate(forward, world_up, azimuth), _rotate(up, world_up, azimuth)
            right = np.cross(forward, up)
            right /= np.linalg.norm(right)
            forward, up = _rotate(forward, right, elevation), _rotate(up, right, elevation)
            up = _rotate(up, forward, roll)
            camera.forward[:] = forward
            camera.up[:] = up
            camera.pos[:] = lookat - forward * lookat_distance * zoom


class ColorDrift:
    """Every material's (and every material-less geom's) RGB drifts within +-scale of its original.

    Offsets are drawn uniformly at reset, then follow a random walk with std 0.03*scale per step.
    """

    def __init__(self, model: mujoco.MjModel, scale: float) -> None:
        self._model = model
        self._scale = scale
        self._plain_geoms = np.flatnonzero(model.geom_matid < 0)
        self._base = np.concatenate([model.mat_rgba[:, :3], model.geom_rgba[self._plain_geoms, :3]]).copy()
        self._offset = np.zeros_like(self._base)
        # Each geom's row of _base: its material's, or its own when it has none.
        self._geom_row = model.geom_matid.copy()
        self._geom_row[self._plain_geoms] = model.nmat + np.arange(len(self._plain_geoms))
        self._rng: np.random.Generator | None = None

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._offset = rng.uniform(-self._scale, self._scale, self._base.shape)
        self._apply()

    def step(self) -> None:
        self._offset = np.clip(self._offset + self._rng.normal(0.0, 0.03 * self._scale, self._base.shape), -self._scale, self._scale)
        self._apply()

    def _apply(self) -> None:
        rgb = np.clip(self._base + self._offset, 0.0, 1.0)
        nmat = self._model.nmat
        self._model.mat_rgba[:, :3] = rgb[:nmat]
        self._model.geom_rgba[self._plain_geoms, :3] = rgb[nmat:]

    def seen_state(self, pixel_geoms: np.ndarray) -> np.ndarray:
        """Mean RGB offset over the given pixels' geoms: the colour shift the camera shows.

        The mean over every drifting colour (what probe versions 1-3 read) averages independent walks to
        almost nothing and counts colours no pixel shows; weighting each colour by the pixels that show it
        makes the state a function of the frame, so a latent that sees the drift can hold it."""
        if len(pixel_geoms) == 0:
            return np.zeros(3, np.float32)
        return self._offset[self._geom_row[pixel_geoms]].mean(axis=0).astype(np.float32)

    def restore(self) -> None:
        self._offset[:] = 0.0
        self._apply()


class MovingObjects:
    """Coloured shapes that fly on their own around the camera's look-at point.

    They are extra geoms of the render's scene only (no mass, no contacts), so the physics is
    untouched; in the segmentation render they are objects of their own, neither agent nor
    background. Positions are in units of the visible half-height at the look-at point,
    in the camera's frame, and bounce inside [-1, 1]^3.
    """

    SHAPES = (mujoco.mjtGeom.mjGEOM_SPHERE, mujoco.mjtGeom.mjGEOM_BOX, mujoco.mjtGeom.mjGEOM_CAPSULE, mujoco.mjtGeom.mjGEOM_CYLINDER)

    def __init__(self, count: int) -> None:
        self.count = count
        self.position = np.zeros((count, 3))
        self._velocity = np.zeros((count, 3))
        self._size = np.zeros(count)
        self._shape = np.zeros(count, dtype=int)
        self._rgba = np.zeros((count, 4), dtype=np.float32)

    def reset(self, rng: np.random.Generator) -> None:
        self.position = rng.uniform(-1.0, 1.0, (self.count, 3))
        direction = rng.normal(size=(self.count, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        self._velocity = direction * rng.uniform(0.01, 0.04, (self.count, 1))
        self._size = rng.uniform(0.08, 0.2, self.count)
        self._shape = rng.integers(len(self.SHAPES), size=self.count)
        self._rgba = np.concatenate([rng.uniform(0.0, 1.0, (self.count, 3)), np.ones((self.count, 1))], axis=1).astype(np.float32)

    def step(self) -> None:
        moved = self.position + self._velocity
        bounce = np.abs(moved) > 1.0
        self._velocity[bounce] *= -1.0
        self.position = np.clip(moved, -1.0, 1.0)

    def state(self) -> np.ndarray:
        return self.position.astype(np.float32)

    def add_to_scene(self, scene: mujoco.MjvScene, lookat_distance: float, fovy_deg: float) -> None:
        camera = scene.camera[0]
        forward, up = np.array(camera.forward), np.array(camera.up)
        right = np.cross(forward, up)
        lookat = np.array(camera.pos) + forward * lookat_distance
        half_height = lookat_distance * np.tan(np.deg2rad(fovy_deg) / 2)
        for k in range(self.count):
            if scene.ngeom >= scene.maxgeom:
                break
            x, y, z = self.position[k] * half_height
            pos = lookat + x * right + y * up + z * forward
            size = self._size[k] * half_height
            geom = scene.geoms[scene.ngeom]
            mujoco.mjv_initGeom(geom, int(self.SHAPES[self._shape[k]]), np.array([size, size, size]), pos, np.eye(3).ravel(), self._rgba[k])
            # A segmentation id of its own; objtype UNKNOWN marks it as neither agent nor background.
            geom.objtype = mujoco.mjtObj.mjOBJ_UNKNOWN
            geom.objid = k
            geom.segid = scene.ngeom
            scene.ngeom += 1
