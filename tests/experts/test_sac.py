"""SAC experts: learning, exact resume, checkpoints, and the experts shipped in the package."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from masklam.envs.policies import CheckpointPolicy
from masklam.errors import UsageError
from masklam.experts.evaluate import SHIPPED, evaluate_checkpoint, shipped_expert
from masklam.experts.sac import SAC, SACConfig, evaluate, export_policy, train

REPO = Path(__file__).resolve().parents[2]
UNIT = np.ones(1, np.float32)


def test_short_training_beats_the_random_policy(tmp_path):
    config = SACConfig("dmc:cartpole-balance", total_steps=6000, learning_starts=500, episode_steps=200, hidden=64, batch_size=64, eval_every=6000, eval_episodes=2, checkpoint_every=6000)
    train(config, tmp_path, show_progress=False)
    policy = CheckpointPolicy(tmp_path / "policy.pt", "dmc:cartpole-balance", 5, -UNIT, UNIT)
    trained = evaluate(policy.act, "dmc:cartpole-balance", 5, seed=1, episode_steps=200)
    rng = np.random.default_rng(0)
    random = evaluate(lambda s: rng.uniform(-1, 1, 1), "dmc:cartpole-balance", 5, seed=1, episode_steps=200)
    # Measured: about 180 against 110 (of 200 at most).
    assert trained.mean() > random.mean() + 40, (trained, random)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_return_mean" in m for m in metrics) and any("critic_loss" in m for m in metrics)
    assert list((tmp_path / "tensorboard").iterdir())


def test_exported_policy_acts_like_the_agent(tmp_path):
    config = SACConfig("dmc:cheetah-run", hidden=32)
    agent = SAC(config, 17, 6)
    path = export_policy(tmp_path, agent, {})
    policy = CheckpointPolicy(path, "dmc:cheetah-run", 17, -np.ones(6, np.float32), np.ones(6, np.float32))
    state = np.random.default_rng(0).normal(size=17).astype(np.float32)
    np.testing.assert_allclose(policy.act(state), agent.act(state, explore=False), atol=1e-6)


def expert_command(out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "masklam.cli", "expert", "train", "dmc:cartpole-swingup", "--out", str(out), "--steps", str(steps),
            "--episode-steps", "100", "--learning-starts", "100", "--hidden", "32", "--batch-size", "32",
            "--checkpoint-every", "100", "--eval-every", "100000", "--no-progress"]


def actor_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "train_state.pt", weights_only=False)["agent"]["actor"]


def test_a_killed_run_resumes_exactly(tmp_path):
    env = dict(os.environ, MUJOCO_GL="egl")
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    process = subprocess.Popen(expert_command(killed, 1500), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "train_state.pt").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved_step = torch.load(killed / "train_state.pt", weights_only=False)["progress"]["step"]
    assert 0 < saved_step < 1500, "the kill should land mid-run"
    subprocess.run(expert_command(killed, 1500), env=env, check=True, capture_output=True)
    subprocess.run(expert_command(straight, 1500), env=env, check=True, capture_output=True)
    for name, tensor in actor_weights(straight).items():
        torch.testing.assert_close(actor_weights(killed)[name], tensor, rtol=0, atol=0)
    resumed = torch.load(killed / "train_state.pt", weights_only=False)
    assert resumed["progress"]["step"] == 1500 and resumed["buffer"]["count"] == 1500


def test_a_run_folder_with_other_settings_is_refused(tmp_path):
    train(SACConfig("dmc:cartpole-swingup", total_steps=50, learning_starts=50, episode_steps=50, checkpoint_every=50, eval_every=50, eval_episodes=1), tmp_path, show_progress=False)
    with pytest.raises(UsageError, match="another config"):
        train(SACConfig("dmc:cartpole-swingup", total_steps=60, learning_starts=50, episode_steps=50), tmp_path, show_progress=False)


def test_metaworld_has_no_sac_expert():
    with pytest.raises(UsageError, match="scripted"):
        SACConfig("metaworld:push-v3")


def documented_returns() -> dict[str, float]:
    """Mean returns from docs/experts.md's table of shipped experts."""
    text = (REPO / "docs" / "experts.md").read_text()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| `dmc:([a-z_-]+)` \| ([0-9.]+) ±", text, re.MULTILINE)}


SHIPPED_TASKS = sorted(p.stem for p in SHIPPED.glob("*.pt"))


@pytest.mark.parametrize("task", SHIPPED_TASKS)
def test_shipped_expert_matches_its_documented_return(task):
    documented = documented_returns()[task]
    result = evaluate_checkpoint(f"dmc:{task}", None, episodes=3, seed=123)
    assert abs(result["mean"] - documented) <= 0.15 * documented, (result, documented)


def test_every_shipped_expert_is_documented():
    assert set(SHIPPED_TASKS) <= set(documented_returns())


def test_missing_shipped_expert_says_how_to_train_one():
    with pytest.raises(UsageError, match="masklam expert train dmc:humanoid-run"):
        shipped_expert("dmc:humanoid-run")
