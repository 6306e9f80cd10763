"""`masklam evaluate`: online rollouts of a decoded latent policy in the distracting environment.

The policy sees what the dataset's frames show (same env, render and distractor spec, the test split's
held-out background videos): a stack of the last frames -> latent policy -> action decoder -> action,
deterministic, clipped to the bounds. Returns are normalised by the return of the policy that collected
the dataset (its test split's mean: the expert's, for `--policy expert` data).
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from masklam.atomic import atomic_write_json
from masklam.data.dataset import open_dataset
from masklam.data.ingest import require_simulator
from masklam.devices import resolve
from masklam.envs.env import DistractingEnv
from masklam.envs.spec import EnvSpec
from masklam.errors import UsageError
from masklam.models.lam import ActionDecoder, ActionDecoderConfig
from masklam.train.loop import load_checkpoint
from masklam.train.stages import frozen_lam, frozen_policy, frozen_stage_policy, lam_dataset, require_lam

EVAL_SEED_KEY = 11  # evaluation episodes draw seeds no dataset episode uses


def load_decoded_policy(run_dir: Path, data: str | None = None, device: str = "cpu"):
    """The run's frozen LAM, latent policy and action decoder on ``device``, and the LAM's config and dataset
    info (``data``: where the LAM's dataset is, when not where the run folder says)."""
    lam_config, lam, info = frozen_lam(run_dir, data, device=device)
    policy = frozen_policy(run_dir, lam)
    if not (run_dir / "decoder.pt").exists():
        raise UsageError(f"{run_dir} has no action decoder (decoder.pt): run `masklam train decoder {run_dir}` first")
    decoder = ActionDecoder(ActionDecoderConfig(latent_dim=policy.config.latent_dim), info["features"]["action"]["shape"][0])
    load_checkpoint(run_dir / "decoder.pt", decoder)
    return lam_config, lam, policy, decoder.to(device).eval(), info


def rollout_returns(env: DistractingEnv, act, stack: int, episodes: int, seed: int, limit: int, bar) -> tuple[np.ndarray, list[bool]]:
    """Returns (and Meta-World successes) of ``act(frame_stack) -> action`` over seeded episodes."""
    returns, successes = [], []
    for episode in range(episodes):
        episode_seed = int(np.random.SeedSequence(seed, spawn_key=(EVAL_SEED_KEY, episode)).generate_state(1)[0])
        observation = env.reset(episode_seed)
        frames = deque([observation.rgb] * stack, maxlen=stack)  # the stack starts filled with the first frame
        total, success = 0.0, False
        for _ in range(limit):
            action = act(torch.from_numpy(np.stack(frames))[None])  # act moves it to its device and back
            transition = env.step(np.clip(action, env.action_low, env.action_high))
            frames.append(transition.observation.rgb)
            total += transition.reward
            success = success or bool(transition.info.get("success", False))
            bar.update(1)
            if transition.terminated or transition.truncated:
                break
        returns.append(total)
        successes.append(success)
    return np.array(returns), successes


REFERENCE_RETURNS = "bc-actions-evaluate.json"  # the reference's returns, kept beside its network


def reference_key(run_dir: Path, info: dict[str, Any], episodes: int, seed: int, limit: int) -> dict[str, Any]:
    """What the reference's returns depend on: its weights (by content: a network shared between run folders is
    one network), the episodes and the environment."""
    weights = hashlib.sha256((run_dir / "bc-actions.pt").read_bytes()).hexdigest()
    return {"bc_actions_sha256": weights, "episodes": episodes, "seed": seed, "steps": limit, "env": info["env"]}


def cached_reference_returns(path: Path, key: dict[str, Any]) -> np.ndarray | None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: rolled out again and rewritten
        return None
    return np.array(saved["returns"]) if isinstance(saved, dict) and saved.get("key") == key else None


def evaluate_run(
    run_dir: Path,
    episodes: int = 10,
    seed: int = 0,
    steps: int | None = None,
    show_progress: bool = True,
    data: str | None = None,
    device: str = "auto",
    reference_returns: Path | None = None,
) -> dict[str, Any]:
    """Online returns of the decoded policy (and of BC on true actions, when trained) in the test split's
    simulator; the networks run on ``device`` (masklam/devices.py), the simulator on the CPU.

    The reference's returns are kept in ``reference_returns`` (default RUN/bc-actions-evaluate.json) under the
    hash of its weights and the episodes, and read from there by every evaluation of the same network: the runs
    of one seed that share it (a recipe) are all normalised by one set of its returns, rolled out once. (Rolled
    out by another version of the code they can differ: chaotic dynamics amplify the last bits in which, say, a
    convolution's memory layout changes its sums; docs/training.md, "Online evaluation".)"""
    run_dir, device = Path(run_dir), resolve(device)
    if episodes < 1:
        raise UsageError("--episodes must be at least 1")
    require_lam(run_dir)
    dataset = lam_dataset(run_dir, data)  # refused first on data with no simulator, before the other stages are asked for
    require_simulator(open_dataset(dataset).info, dataset, "evaluate (online rollouts)")
    lam_config, lam, policy, decoder, info = load_decoded_policy(run_dir, data, device)
    reference_policy = frozen_stage_policy(run_dir, "bc-actions", lam, latent_dim=info["features"]["action"]["shape"][0])
    spec = EnvSpec.from_json(info["env"])
    stack = lam_config.data.stack
    with DistractingEnv(spec, "test") as env, torch.no_grad():
        limit = steps or env.max_steps
        bc_returns = key = None
        if reference_policy is not None:
            reference_returns = Path(reference_returns or run_dir / REFERENCE_RETURNS)
            key = reference_key(run_dir, info, episodes, seed, limit)
            bc_returns = cached_reference_returns(reference_returns, key)
        roll_reference = reference_policy is not None and bc_returns is None
        bar = tqdm(total=episodes * limit * (1 + roll_reference), unit="step", desc="evaluate", disable=not show_progress or None)
        decoded = lambda obs: decoder(policy.latent({"obs": obs.to(device)}))[0].float().cpu().numpy()  # noqa: E731
        returns, successes = rollout_returns(env, decoded, stack, episodes, seed, limit, bar)
        if roll_reference:
            reference = lambda obs: reference_policy.latent({"obs": obs.to(device)})[0].float().cpu().numpy()  # noqa: E731
            bc_returns, _ = rollout_returns(env, reference, stack, episodes, seed, limit, bar)
            atomic_write_json(reference_returns, {"key": key, "returns": bc_returns.tolist()})
        bar.close()
    collector = info["splits"]["test"].get("mean_return") or info["splits"]["train"].get("mean_return")
    mean = float(returns.mean())
    result: dict[str, Any] = {
        "run": str(run_dir),
        "env": spec.env_id,
        "episodes": episodes,
        "return_mean": mean,
        "return_std": float(returns.std()),
        "returns": returns.round(3).tolist(),
        "collector_return": collector,
        "normalised_by_collector": mean / collector if collector else None,
        "bc_actions_return": float(bc_returns.mean()) if bc_returns is not None else None,
        "normalised_by_bc_actions": mean / float(bc_returns.mean()) if bc_returns is not None and bc_returns.mean() != 0 else None,
        "references": {
            "collector": "mean return of the policy that collected the dataset (its test split; the expert for --policy expert data)",
            "bc_actions": "return of the same network trained by BC on every labelled transition's true action (masklam train bc-actions), same episodes",
        },
    }
    if spec.env_id.startswith("metaworld:"):
        result["success_rate"] = float(np.mean(successes))
    atomic_write_json(run_dir / "evaluate.json", result)
    return result


def render_evaluation(result: dict[str, Any]) -> str:
    line = f"{result['env']}: return {result['return_mean']:.1f} ± {result['return_std']:.1f} over {result['episodes']} episodes"
    if result["normalised_by_collector"] is not None:
        line += f"\n  / the collecting policy's return ({result['collector_return']:.1f}): {result['normalised_by_collector']:.3f}"
    if result["normalised_by_bc_actions"] is not None:
        line += f"\n  / BC on true actions' return ({result['bc_actions_return']:.1f}): {result['normalised_by_bc_actions']:.3f}"
    if "success_rate" in result:
        line += f"; success {result['success_rate']:.0%}"
    return line
