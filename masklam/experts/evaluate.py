"""Evaluating policy checkpoints: the shipped experts (found by masklam.envs.policies.shipped_expert) or any other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from masklam.envs.policies import CheckpointPolicy, shipped_expert
from masklam.envs.spec import parse_env_id
from masklam.errors import UsageError
from masklam.packaged import SHIPPED_EXPERTS as SHIPPED  # the registry lives below data/ and experts/ (envs/policies.py)

__all__ = ["SHIPPED", "evaluate_checkpoint", "evaluate_scripted", "shipped_expert"]


def evaluate_scripted(env_id: str, episodes: int, seed: int) -> dict[str, Any]:
    """Meta-World's scripted expert: returns and success rate (success at any step of a 500-step episode)."""
    from masklam.envs.metaworld import METAWORLD_STEPS, MetaWorldSimulator

    sim = MetaWorldSimulator(parse_env_id(env_id).task)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))
    returns, successes = [], []
    for _ in range(episodes):
        sim.reset(rng)
        total, success = 0.0, False
        for _ in range(METAWORLD_STEPS):
            step = sim.step(np.clip(sim.scripted_action(), sim.action_low, sim.action_high))
            total, success = total + step.reward, success or step.info["success"]
        returns.append(total)
        successes.append(success)
    sim.close()
    returns = np.array(returns)
    return {
        "env_id": env_id,
        "checkpoint": "scripted",
        "episodes": episodes,
        "mean": float(returns.mean()),
        "std": float(returns.std()),
        "success_rate": float(np.mean(successes)),
    }


def evaluate_checkpoint(env_id: str, checkpoint: Path | None, episodes: int, seed: int) -> dict[str, Any]:
    from masklam.envs.dmc import DMCSimulator
    from masklam.experts.sac import evaluate

    if episodes < 1:
        raise UsageError("--episodes must be at least 1")
    if parse_env_id(env_id).suite == "metaworld":
        if checkpoint is not None:
            raise UsageError("Meta-World's experts are its scripted policies: leave out --checkpoint")
        return evaluate_scripted(env_id, episodes, seed)
    path = Path(checkpoint) if checkpoint is not None else shipped_expert(env_id)
    sim = DMCSimulator(parse_env_id(env_id).task)
    state_dim = sim.state_dim
    unit = np.ones_like(sim.action_low)
    sim.close()
    policy = CheckpointPolicy(path, env_id, state_dim, -unit, unit)  # actions in [-1, 1]; evaluate rescales
    returns = evaluate(policy.act, env_id, episodes, seed, reset=lambda: policy.reset(None))
    return {
        "env_id": env_id,
        "checkpoint": str(path),
        "episodes": episodes,
        "mean": float(returns.mean()),
        "std": float(returns.std()),
        "returns": returns.round(3).tolist(),
    }
