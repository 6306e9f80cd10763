"""Policies that drive data collection: random, Meta-World's scripted experts, saved checkpoints.

A policy acts on the proprioceptive state (never on pixels), so distractors do not change
what it does. Every random draw comes from the generator given at ``reset``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from masklam.atomic import atomic_file
from masklam.envs.spec import parse_env_id
from masklam.errors import UsageError
from masklam.packaged import SHIPPED_EXPERTS

POLICY_FORMAT = "masklam.policy"
POLICY_FORMAT_VERSION = 1
HANDOVER_KIND = "handover"  # two actors and the rule that hands over between them (format version 2)
HANDOVER_FORMAT_VERSION = 2


class Policy(Protocol):
    def reset(self, rng: np.random.Generator) -> None: ...

    def act(self, state: np.ndarray) -> np.ndarray: ...


class RandomPolicy:
    """Uniform actions within the bounds."""

    def __init__(self, low: np.ndarray, high: np.ndarray) -> None:
        self._low, self._high = low, high
        self._rng: np.random.Generator | None = None

    def reset(self, rng: np.random.Generator) -> None:
        self._rng = rng

    def act(self, state: np.ndarray) -> np.ndarray:
        return self._rng.uniform(self._low, self._high).astype(np.float32)


class ScriptedPolicy:
    """Meta-World's hand-written expert (it reads the simulator's own last observation)."""

    def __init__(self, simulator: Any) -> None:
        self._simulator = simulator

    def reset(self, rng: np.random.Generator) -> None:
        pass

    def act(self, state: np.ndarray) -> np.ndarray:
        return self._simulator.scripted_action()


def mlp_actor(state_dim: int, action_dim: int, hidden: list[int]):
    """A deterministic MLP actor: state -> action in [-1, 1] (tanh), scaled to the bounds by the caller."""
    import torch.nn as nn

    layers: list[nn.Module] = []
    width = state_dim
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers += [nn.Linear(width, action_dim), nn.Tanh()]
    return nn.Sequential(*layers)


def save_policy_checkpoint(path: Path, actor, env_id: str, state_dim: int, action_dim: int, hidden: list[int], extra: dict | None = None) -> None:
    """Save an MLP actor in the format ``--policy PATH`` loads (atomically)."""
    import torch

    path = Path(path)
    payload = {
        "format": POLICY_FORMAT,
        "version": POLICY_FORMAT_VERSION,
        "env_id": env_id,
        "state_dim": state_dim,
        "action_dim": action_dim,
        "hidden": list(hidden),
        "state_dict": actor.state_dict(),
        "extra": extra or {},
    }
    with atomic_file(path) as f:
        torch.save(payload, f)


class CheckpointPolicy:
    """A saved policy, deterministic: one MLP actor (``save_policy_checkpoint``) or a hand-over of two actors
    of one body (``masklam.experts.handover``): a get-up actor from the starts the main actor fails from, until
    the body has stood still for a while, then the main actor for the rest of the episode."""

    def __init__(self, path: Path, env_id: str, state_dim: int, low: np.ndarray, high: np.ndarray) -> None:
        import torch

        payload = load_policy_payload(path)
        if payload["env_id"] != env_id:
            raise UsageError(f"policy checkpoint {path} was trained for {payload['env_id']}, not {env_id}: pass a checkpoint for {env_id}")
        if payload["state_dim"] != state_dim or payload["action_dim"] != len(low):
            raise UsageError(
                f"policy checkpoint {path} expects state {payload['state_dim']} / action {payload['action_dim']} dims but {env_id} has "
                f"{state_dim} / {len(low)}: pass a checkpoint trained on this task"
            )
        parts = payload["actors"] if payload.get("kind") == HANDOVER_KIND else {"main": payload}
        self._actors = {name: _load_actor(path, part, state_dim, len(low)) for name, part in parts.items()}
        self._rule = payload.get("rule")
        self._torch = torch
        self._center, self._half_range = (high + low) / 2, (high - low) / 2
        self.reset(None)

    def reset(self, rng: np.random.Generator | None) -> None:
        self._stage = "main" if self._rule is None else ""  # a hand-over's first state picks its stage
        self._still_steps = 0

    def act(self, state: np.ndarray) -> np.ndarray:
        rule = self._rule
        if self._stage == "":
            self._stage = "getup" if state[rule["pitch_index"]] < rule["start_pitch_below"] else "main"
        if self._stage == "getup":
            self._still_steps = self._still_steps + 1 if standing_still(state, rule) else 0
            if self._still_steps >= rule["hold_steps"]:
                self._stage = "main"
        with self._torch.no_grad():
            unit = self._actors[self._stage](self._torch.as_tensor(state, dtype=self._torch.float32)[None])[0].numpy()
        return (self._center + unit * self._half_range).astype(np.float32)


def standing_still(state: np.ndarray, rule: dict) -> bool:
    """The hand-over's test on one state: up, pitched within bounds, its root barely moving."""
    low, high = rule["pitch_within"]
    return bool(
        state[rule["height_index"]] > rule["height_above"]
        and low <= state[rule["pitch_index"]] <= high
        and np.abs(state[rule["velocity_indices"]]).max() < rule["velocity_below"]
    )


def _load_actor(path: Path, part: dict, state_dim: int, action_dim: int):
    actor = mlp_actor(state_dim, action_dim, part["hidden"])
    try:
        actor.load_state_dict(part["state_dict"])
    except RuntimeError as error:
        raise UsageError(
            f"policy checkpoint {path} has weights of the wrong shapes ({str(error).splitlines()[0]}): re-save it with save_policy_checkpoint"
        ) from None
    return actor.eval()


def load_policy_payload(path: Path) -> dict:
    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"policy checkpoint {path} does not exist: pass --policy random, --policy expert or the path of a saved policy")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt file
        raise UsageError(f"policy checkpoint {path} cannot be read ({type(error).__name__}): it is corrupt or not a masklam policy; re-save it") from None
    if not isinstance(payload, dict) or payload.get("format") != POLICY_FORMAT:
        raise UsageError(f"{path} is not a masklam policy checkpoint: save policies with masklam.envs.policies.save_policy_checkpoint")
    if payload.get("version") not in (POLICY_FORMAT_VERSION, HANDOVER_FORMAT_VERSION):
        raise UsageError(
            f"policy checkpoint {path} has format version {payload.get('version')}, this masklam reads {POLICY_FORMAT_VERSION} and {HANDOVER_FORMAT_VERSION}: upgrade masklam"
        )
    return payload


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_expert(env_id: str, must_exist: bool = True) -> Path:
    """The checkpoint shipped for a DMC task (masklam/experts/checkpoints/), or a UsageError saying how to make one."""
    path = SHIPPED_EXPERTS / f"{parse_env_id(env_id).task}.pt"
    if must_exist and not path.is_file():
        available = ", ".join(sorted(p.stem for p in SHIPPED_EXPERTS.glob("*.pt"))) or "none yet"
        raise UsageError(
            f"no expert is shipped for {env_id} (shipped: {available}): train one with `masklam expert train {env_id} --out DIR` and pass --policy DIR/policy.pt"
        )
    return path


def policy_checkpoint(name: str, env_id: str, must_exist: bool = True) -> Path | None:
    """The checkpoint behind ``--policy NAME`` for ``env_id``, the one resolver of policy names: None for
    ``random`` and Meta-World's scripted experts (``expert`` or ``scripted``), the shipped checkpoint for
    ``expert`` on DMC, else NAME as a path. ``must_exist=False`` names a shipped checkpoint that is missing
    instead of failing (to describe a dataset)."""
    scripted = parse_env_id(env_id).suite == "metaworld"
    if name == "random" or (name in ("expert", "scripted") and scripted):
        return None
    if name == "scripted":
        raise UsageError(f"{env_id} has no scripted policy: use --policy expert, random or PATH")
    if name == "expert":
        return shipped_expert(env_id, must_exist)
    return Path(name)


def make_policy(name: str, env: Any) -> Policy:
    """``random``, ``expert`` (the shipped DMC expert, Meta-World's scripted policy), ``scripted`` or the path of a checkpoint."""
    path = policy_checkpoint(name, env.spec.env_id)
    if path is not None:
        return CheckpointPolicy(path, env.spec.env_id, env.sim.state_dim, env.action_low, env.action_high)
    if name == "random":
        return RandomPolicy(env.action_low, env.action_high)
    return ScriptedPolicy(env.sim)


class NoisyPolicy:
    """Adds Gaussian noise (std relative to half the action range) to another policy's actions."""

    def __init__(self, policy: Policy, std: float, low: np.ndarray, high: np.ndarray) -> None:
        self._policy, self._std = policy, std
        self._half_range = (high - low) / 2
        self._rng: np.random.Generator | None = None

    def reset(self, rng: np.random.Generator) -> None:
        policy_seq, noise_seq = np.random.SeedSequence(int(rng.integers(2**63))).spawn(2)
        self._policy.reset(np.random.default_rng(policy_seq))
        self._rng = np.random.default_rng(noise_seq)

    def act(self, state: np.ndarray) -> np.ndarray:
        action = self._policy.act(state)
        return (action + self._rng.normal(0.0, self._std, action.shape) * self._half_range).astype(np.float32)
