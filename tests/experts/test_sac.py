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
from masklam.experts.sac import SAC, ReplayBuffer, SACConfig, evaluate, export_policy, train

REPO = Path(__file__).resolve().parents[2]
UNIT = np.ones(1, np.float32)


# cartpole-balance is the cheapest DMC task where SAC visibly learns. Measured evaluation returns (2 episodes) at
# steps 1000-6000: white 1-step 128, 133, 131, 159, 140, 182; pink 3-step 123, 120, 198, 187, 192, 198. So white needs
# its 6000 steps, pink 3-step shows it by 4000.
@pytest.mark.slow
@pytest.mark.parametrize("exploration, steps", [({}, 6000), ({"noise_color": 1.0, "n_step": 3}, 4000)], ids=["white-1step", "pink-3step"])
def test_short_training_beats_the_random_policy(tmp_path, exploration, steps):
    config = SACConfig(
        "dmc:cartpole-balance",
        total_steps=steps,
        learning_starts=500,
        episode_steps=200,
        hidden=64,
        batch_size=64,
        eval_every=steps,
        eval_episodes=2,
        checkpoint_every=steps,
        **exploration,
    )
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


def filled_buffer(rewards: list[float], lasts: list[int], terminals: list[int] | None = None, size: int | None = None) -> ReplayBuffer:
    """A buffer with 1-d states numbered by row (state i, next state i + 0.5), so a sample says where it came from."""
    buffer = ReplayBuffer(size or len(rewards), 1, 1)
    terminals = terminals or [0] * len(rewards)
    for i, (reward, last, terminal) in enumerate(zip(rewards, lasts, terminals)):
        buffer.add([i], [0.0], reward, [i + 0.5], terminal, last)
    return buffer


def n_step_samples(buffer: ReplayBuffer, n_step: int, gamma: float = 0.5) -> dict[int, tuple[float, float, float]]:
    """Sampled row -> (n-step reward, state bootstrapped from, its discount), over enough draws to see every row."""
    states, _, rewards, next_states, discounts = buffer.sample(np.random.default_rng(0), 2000, gamma, n_step)
    return {int(s): (float(r), float(n), float(d)) for s, r, n, d in zip(states[:, 0], rewards, next_states[:, 0], discounts)}


def test_n_step_returns_stop_at_episode_ends_and_the_newest_row():
    # Two episodes: rows 0-3 (time limit at 3) and rows 4-6 (terminal at 5), then row 6 still running.
    buffer = filled_buffer([1, 2, 4, 8, 16, 32, 64], lasts=[0, 0, 0, 1, 0, 1, 0], terminals=[0, 0, 0, 0, 0, 1, 0])
    samples = n_step_samples(buffer, n_step=3, gamma=0.5)
    assert samples[0] == (1 + 2 / 2 + 4 / 4, 2.5, 0.125)  # three rewards, bootstrapped from row 2's next state
    assert samples[2] == (4 + 8 / 2, 3.5, 0.25)  # cut at the time limit, which still bootstraps
    assert samples[4] == (16 + 32 / 2, 5.5, 0.0)  # cut at the terminal state: no bootstrap
    assert samples[6] == (64, 6.5, 0.5)  # nothing stored after row 6 yet
    assert set(samples) == set(range(7))


def test_one_step_samples_are_plain_transitions():
    buffer = filled_buffer([1, 2, 4], lasts=[0, 1, 0], terminals=[0, 1, 0])
    assert n_step_samples(buffer, n_step=1, gamma=0.5) == {0: (1, 0.5, 0.5), 1: (2, 1.5, 0.0), 2: (4, 2.5, 0.5)}


def test_n_step_returns_follow_the_ring_past_its_end():
    # Size 4 after 6 rows: rows 4, 5 overwrote positions 0, 1; the oldest row is 2, the newest 5.
    buffer = filled_buffer([1, 2, 4, 8, 16, 32], lasts=[0] * 6, size=4)
    samples = n_step_samples(buffer, n_step=2, gamma=0.5)
    assert samples == {2: (4 + 4, 3.5, 0.25), 3: (8 + 8, 4.5, 0.25), 4: (16 + 16, 5.5, 0.25), 5: (32, 5.5, 0.5)}


def test_a_buffer_saved_without_episode_ends_finds_them():
    buffer = filled_buffer([1, 2, 4, 8], lasts=[0, 1, 0, 0])
    buffer.next_states[:, 0] = [1, 5, 3, 9]  # rows 0 -> 1 and 2 -> 3 follow on; row 1 ends an episode
    saved = {k: v for k, v in buffer.state_dict().items() if k != "lasts"}
    loaded = ReplayBuffer(4, 1, 1)
    loaded.load_state_dict(saved)
    assert loaded.lasts.tolist() == [0, 1, 0, 1]


def episode_rewards(run: Path, episode_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Per episode: the rewards the learner saw (the buffer's) and the returns the run logged."""
    buffer = torch.load(run / "train_state.pt", weights_only=False)["buffer"]
    learned = buffer["rewards"].reshape(-1, episode_steps).sum(1)
    logged = [m["episode_return"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "episode_return" in m]
    return learned, np.array(logged)


def test_a_bonus_task_shapes_what_the_learner_sees_but_not_the_logged_return(tmp_path):
    # cartpole's balance and swingup pay the same dense reward (they differ in their initial states),
    # so a swingup bonus of 0.5 on balance makes the learner see 1.5x the task's reward.
    settings = dict(total_steps=400, learning_starts=400, episode_steps=200, checkpoint_every=400, eval_every=400, eval_episodes=1)
    train(SACConfig("dmc:cartpole-balance", **settings), tmp_path / "plain", show_progress=False)
    train(SACConfig("dmc:cartpole-balance", bonus_task="swingup", bonus_weight=0.5, **settings), tmp_path / "shaped", show_progress=False)
    plain_learned, plain_logged = episode_rewards(tmp_path / "plain", 200)
    shaped_learned, shaped_logged = episode_rewards(tmp_path / "shaped", 200)
    np.testing.assert_allclose(plain_learned, plain_logged, rtol=1e-5)
    np.testing.assert_allclose(shaped_logged, plain_logged)  # random actions from the same seed: the same episodes
    np.testing.assert_allclose(shaped_learned, 1.5 * shaped_logged, rtol=1e-5)


def test_a_height_bonus_pays_the_learner_for_rising_but_leaves_the_logged_return(tmp_path):
    settings = dict(total_steps=400, learning_starts=400, episode_steps=200, checkpoint_every=400, eval_every=400, eval_episodes=1)
    train(SACConfig("dmc:hopper-hop", **settings), tmp_path / "plain", show_progress=False)
    train(SACConfig("dmc:hopper-hop", height_bonus=0.5, **settings), tmp_path / "shaped", show_progress=False)
    plain = torch.load(tmp_path / "plain" / "train_state.pt", weights_only=False)["buffer"]["rewards"]
    shaped = torch.load(tmp_path / "shaped" / "train_state.pt", weights_only=False)["buffer"]["rewards"]
    bonus = shaped - plain  # random actions from the same seed: the same states, so the difference is the bonus
    assert bonus.min() >= 0 and bonus.max() <= 0.5 + 1e-6 and bonus.std() > 0.01
    np.testing.assert_allclose(episode_rewards(tmp_path / "shaped", 200)[1], episode_rewards(tmp_path / "plain", 200)[1])


def test_a_height_bonus_on_a_body_without_a_standing_height_writes_nothing(tmp_path):
    with pytest.raises(UsageError, match="no standing height"):
        train(SACConfig("dmc:cheetah-run", height_bonus=0.1), tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


def test_max_start_pitch_trains_from_those_starts_only_and_evaluates_from_all(tmp_path):
    settings = dict(total_steps=400, learning_starts=400, episode_steps=50, checkpoint_every=400, eval_every=400, eval_episodes=1)
    train(SACConfig("dmc:hopper-hop", max_start_pitch=-1.0, **settings), tmp_path / "back", show_progress=False)
    train(SACConfig("dmc:hopper-hop", **settings), tmp_path / "all", show_progress=False)

    def start_pitches(run):
        buffer = torch.load(run / "train_state.pt", weights_only=False)["buffer"]
        firsts = np.flatnonzero(np.append(1.0, buffer["lasts"][:-1]))  # rows that begin an episode
        return buffer["states"][firsts, 1]  # hopper's state opens with rootz, rooty

    assert len(start_pitches(tmp_path / "back")) == 8 and (start_pitches(tmp_path / "back") < -1.0).all()
    assert (start_pitches(tmp_path / "all") >= -1.0).any()  # the task's own starts: not all of them qualify


def test_max_start_pitch_is_checked(tmp_path):
    with pytest.raises(UsageError, match="--max-start-pitch must be between"):
        SACConfig("dmc:hopper-hop", max_start_pitch=-3.1)
    with pytest.raises(UsageError, match="no pitch joint"):
        train(SACConfig("dmc:cartpole-swingup", max_start_pitch=0.0), tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


def test_exploration_settings_are_checked():
    with pytest.raises(UsageError, match="--noise-color"):
        SACConfig("dmc:hopper-hop", noise_color=-1)
    with pytest.raises(UsageError, match="--n-step"):
        SACConfig("dmc:hopper-hop", n_step=0)
    with pytest.raises(UsageError, match="go together"):
        SACConfig("dmc:hopper-hop", bonus_task="stand")


def test_a_bonus_task_that_does_not_fit_writes_nothing(tmp_path):
    with pytest.raises(UsageError, match="no task hopper-fly"):
        train(SACConfig("dmc:hopper-hop", bonus_task="fly", bonus_weight=0.1), tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


def test_exported_policy_acts_like_the_agent(tmp_path):
    config = SACConfig("dmc:cheetah-run", hidden=32)
    agent = SAC(config, 17, 6)
    path = export_policy(tmp_path, agent, {})
    policy = CheckpointPolicy(path, "dmc:cheetah-run", 17, -np.ones(6, np.float32), np.ones(6, np.float32))
    state = np.random.default_rng(0).normal(size=17).astype(np.float32)
    np.testing.assert_allclose(policy.act(state), agent.act(state, explore=False), atol=1e-6)


def expert_args(out: Path, steps: int) -> list[str]:
    return [
        "expert",
        "train",
        "dmc:cartpole-swingup",
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--episode-steps",
        "100",
        "--learning-starts",
        "100",
        "--hidden",
        "32",
        "--batch-size",
        "32",
        "--checkpoint-every",
        "100",
        "--eval-every",
        "100000",
        "--no-progress",
    ]


def actor_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "train_state.pt", weights_only=False)["agent"]["actor"]


@pytest.mark.slow
@pytest.mark.parametrize("exploration", [[], ["--noise-color", "1", "--n-step", "3"]], ids=["white-1step", "pink-3step"])
def test_a_killed_run_resumes_exactly(masklam_cli, tmp_path, exploration):
    # The killed run is a real process killed with SIGKILL; resuming it and the uninterrupted run go through
    # the same command in this process (no second and third interpreter to start).
    env = dict(os.environ, MUJOCO_GL="egl")
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    steps = 500  # checkpoints every 100 steps, so the kill (0.3 s after the first) lands well before the end
    command = [sys.executable, "-m", "masklam.cli", *expert_args(killed, steps), *exploration]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "train_state.pt").exists():
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved_step = torch.load(killed / "train_state.pt", weights_only=False)["progress"]["step"]
    assert 0 < saved_step < steps, "the kill should land mid-run"
    for run in (killed, straight):
        done = masklam_cli(*expert_args(run, steps), *exploration)
        assert done.returncode == 0, done.stderr
    for name, tensor in actor_weights(straight).items():
        torch.testing.assert_close(actor_weights(killed)[name], tensor, rtol=0, atol=0)
    resumed = torch.load(killed / "train_state.pt", weights_only=False)
    assert resumed["progress"]["step"] == steps and resumed["buffer"]["count"] == steps


def test_a_run_folder_with_other_settings_is_refused(tmp_path):
    train(
        SACConfig("dmc:cartpole-swingup", total_steps=50, learning_starts=50, episode_steps=50, checkpoint_every=50, eval_every=50, eval_episodes=1),
        tmp_path,
        show_progress=False,
    )
    with pytest.raises(UsageError, match="another config"):
        train(SACConfig("dmc:cartpole-swingup", total_steps=60, learning_starts=50, episode_steps=50), tmp_path, show_progress=False)


TINY = dict(episode_steps=100, learning_starts=100, hidden=32, batch_size=32, checkpoint_every=100, eval_every=100_000, eval_episodes=1)


@pytest.mark.slow
def test_a_run_started_from_another_goes_on_as_if_it_had_not_stopped(tmp_path):
    # The seed only shapes a fresh start: a run started from seed 1's state goes on as seed 1 would.
    train(SACConfig("dmc:cartpole-swingup", total_steps=200, seed=1, **TINY), tmp_path / "source", show_progress=False)
    train(SACConfig("dmc:cartpole-swingup", total_steps=400, seed=0, init_from=str(tmp_path / "source"), **TINY), tmp_path / "forked", show_progress=False)
    train(SACConfig("dmc:cartpole-swingup", total_steps=400, seed=1, **TINY), tmp_path / "straight", show_progress=False)
    for name, tensor in actor_weights(tmp_path / "straight").items():
        torch.testing.assert_close(actor_weights(tmp_path / "forked")[name], tensor, rtol=0, atol=0)
    forked = torch.load(tmp_path / "forked" / "train_state.pt", weights_only=False)
    assert forked["progress"]["step"] == 400 and forked["buffer"]["count"] == 400
    assert forked["config"]["init_from"] == str(tmp_path / "source")


@pytest.mark.slow
def test_a_run_started_from_another_takes_its_own_settings(tmp_path):
    train(SACConfig("dmc:cartpole-swingup", total_steps=200, **TINY), tmp_path / "source", show_progress=False)
    source = tmp_path / "source" / "train_state.pt"  # the file works as well as its folder
    alphas = {}
    for target in (-2.0, 2.0):
        run = tmp_path / f"entropy{target}"
        train(SACConfig("dmc:cartpole-swingup", total_steps=500, target_entropy=target, init_from=str(source), **TINY), run, show_progress=False)
        saved = torch.load(run / "train_state.pt", weights_only=False)
        np.testing.assert_array_equal(saved["buffer"]["states"][:200], torch.load(source, weights_only=False)["buffer"]["states"])
        alphas[target] = saved["agent"]["log_alpha"].item()
    assert alphas[2.0] > alphas[-2.0], "a higher entropy target should raise the temperature"


def test_init_from_is_checked(tmp_path):
    train(SACConfig("dmc:cartpole-swingup", total_steps=100, **TINY), tmp_path / "source", show_progress=False)
    refusals = {
        "does not exist": SACConfig("dmc:cartpole-swingup", total_steps=300, init_from=str(tmp_path / "nothing"), **TINY),
        "env_id": SACConfig("dmc:cartpole-balance", total_steps=300, init_from=str(tmp_path / "source"), **TINY),
        "already at step": SACConfig("dmc:cartpole-swingup", total_steps=100, init_from=str(tmp_path / "source"), **TINY),
        "does not fit": SACConfig("dmc:cartpole-swingup", total_steps=300, buffer_size=50, init_from=str(tmp_path / "source"), **TINY),
    }
    for message, config in refusals.items():
        with pytest.raises(UsageError, match=message):
            train(config, tmp_path / "forked", show_progress=False)
        assert not (tmp_path / "forked").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no train_state.pt"):
        train(SACConfig("dmc:cartpole-swingup", total_steps=300, init_from=str(tmp_path / "empty"), **TINY), tmp_path / "forked", show_progress=False)


def test_a_run_started_from_another_resumes_without_it(tmp_path):
    train(SACConfig("dmc:cartpole-swingup", total_steps=100, **TINY), tmp_path / "source", show_progress=False)
    forked = SACConfig("dmc:cartpole-swingup", total_steps=300, init_from=str(tmp_path / "source"), **TINY)
    train(forked, tmp_path / "forked", show_progress=False)
    step = torch.load(tmp_path / "forked" / "train_state.pt", weights_only=False)["progress"]["step"]
    (tmp_path / "source" / "train_state.pt").unlink()
    train(forked, tmp_path / "forked", show_progress=False)  # its own checkpoint is what it resumes from
    assert torch.load(tmp_path / "forked" / "train_state.pt", weights_only=False)["progress"]["step"] == step == 300


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
