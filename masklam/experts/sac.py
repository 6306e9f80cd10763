"""Soft actor-critic on proprioceptive state: the experts that collect DMC data.

Read top to bottom: config, networks, replay buffer, checkpoint, the training loop, evaluation.
No rendering happens here; the experts act on state, so distractors never change what they do.

Choices for a 2-core CPU: small MLPs (256 x 2), batch 256, one torch thread per run (two runs
side by side use both cores better than one run with two threads), twin critics with
Polyak-averaged targets and a learned temperature (Haarnoja et al. 2018). Checkpoints are
taken at episode boundaries, so resuming needs no simulator state: the next episode's
initial state comes from the saved random generator, and a resumed run is bit-identical
to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from colorednoise import powerlaw_psd_gaussian
from tqdm import tqdm

from masklam.atomic import atomic_file, atomic_write_bytes, json_line
from masklam.envs.dmc import DMCSimulator
from masklam.envs.policies import mlp_actor, save_policy_checkpoint
from masklam.envs.spec import parse_env_id
from masklam.errors import UsageError

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclass(frozen=True)
class SACConfig:
    env_id: str
    total_steps: int = 500_000
    seed: int = 0
    episode_steps: int = 1000
    hidden: int = 256
    batch_size: int = 256
    learning_rate: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    learning_starts: int = 5000  # random actions first, to fill the buffer
    buffer_size: int = 1_000_000
    eval_every: int = 20_000
    eval_episodes: int = 5
    checkpoint_every: int = 20_000  # taken at the first episode boundary after this many steps
    threads: int = 1
    # Exploration noise's power-law exponent: 0 is SAC's white noise, 1 pink, 2 red. Temporally
    # correlated noise explores sequences of pushes that white noise averages out (Eberhard et al. 2023).
    noise_color: float = 0.0
    # Bootstrapping after n rewards instead of one carries a reward back n steps per update, which
    # matters where reward is sparse (hopper-hop pays nothing until the hopper stands).
    n_step: int = 1
    # Reward shaping while training only: add bonus_weight x the reward of another task of the same domain
    # (hopper-hop pays nothing until the hopper is up and moving; hopper-stand pays for getting up).
    # Logged returns and every evaluation use the task's own reward.
    bonus_task: str = ""
    bonus_weight: float = 0.0
    # Also while training only: add height_bonus x how far the body is up (0 lying at its lowest, 1 standing).
    # Tasks' own standing rewards pay nothing below standing height; this pays for every bit of rising.
    height_bonus: float = 0.0
    # Train only from starts pitched below this (rooty, radians; negative is tipped backwards), drawing again
    # until one is: the starts a hopper policy fails from get all of the training. Evaluations keep all starts.
    max_start_pitch: float | None = None
    # The policy's entropy the temperature holds it to; None is SAC's -action_dim. Higher explores more.
    target_entropy: float | None = None
    # Start from another run's saved state (weights, optimizers, replay buffer, random state, step count)
    # and go on under these settings: a run folder or its train_state.pt. Used only while --out has none.
    init_from: str = ""

    def __post_init__(self) -> None:
        env = parse_env_id(self.env_id)
        if env.suite != "dmc":
            raise UsageError(f"expert training is for DMC tasks; {self.env_id} has Meta-World's scripted experts (--policy expert)")
        if self.total_steps < 1 or self.episode_steps < 1 or self.batch_size < 1:
            raise UsageError("--steps, --episode-steps and --batch-size must be positive")
        if not 0.0 <= self.noise_color <= 3.0:
            raise UsageError(f"--noise-color must be between 0 (white) and 3, not {self.noise_color}")
        if not 1 <= self.n_step <= 20:
            raise UsageError(f"--n-step must be between 1 and 20, not {self.n_step}")
        if bool(self.bonus_task) != (self.bonus_weight != 0):
            raise UsageError("--bonus-task and --bonus-weight go together: name another task of the domain and a non-zero weight")
        if self.max_start_pitch is not None and not -3.0 <= self.max_start_pitch <= np.pi:
            # starts are drawn over [-pi, pi]: below -3 almost none qualifies and the redraw would go on for ever
            raise UsageError(f"--max-start-pitch must be between -3 and {np.pi:.2f} radians, not {self.max_start_pitch}")


# --- networks -------------------------------------------------------------------------------
def mlp(inputs: int, outputs: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


class Actor(nn.Module):
    """A tanh-squashed Gaussian; its mean, squashed, is the deterministic policy that gets shipped."""

    def __init__(self, state_dim: int, action_dim: int, hidden: int) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.net = mlp(state_dim, 2 * action_dim, hidden)

    def forward(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(state).split(self.action_dim, dim=-1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def sample(self, state: torch.Tensor, generator: torch.Generator | None = None, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised action in [-1, 1] and its log-probability (standard normal ``noise`` if given)."""
        mean, log_std = self(state)
        std = log_std.exp()
        noise = torch.randn(mean.shape, generator=generator) if noise is None else noise
        pre_tanh = mean + std * noise
        action = torch.tanh(pre_tanh)
        log_prob = (-0.5 * noise**2 - log_std - 0.5 * np.log(2 * np.pi)).sum(-1)
        log_prob = log_prob - (2 * (np.log(2) - pre_tanh - F.softplus(-2 * pre_tanh))).sum(-1)  # tanh's Jacobian
        return action, log_prob

    def deterministic(self, state: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self(state)[0])

    def export(self, hidden: int) -> nn.Sequential:
        """The mean head alone, in masklam's policy-checkpoint architecture (mlp_actor)."""
        state_dim = self.net[0].in_features
        policy = mlp_actor(state_dim, self.action_dim, [hidden, hidden])
        with torch.no_grad():
            for target, source in ((policy[0], self.net[0]), (policy[2], self.net[2])):
                target.weight.copy_(source.weight)
                target.bias.copy_(source.bias)
            policy[4].weight.copy_(self.net[4].weight[: self.action_dim])
            policy[4].bias.copy_(self.net[4].bias[: self.action_dim])
        return policy


class TwinCritic(nn.Module):
    def __init__(self, state_dim: int, action_dim: int, hidden: int) -> None:
        super().__init__()
        self.q1, self.q2 = mlp(state_dim + action_dim, 1, hidden), mlp(state_dim + action_dim, 1, hidden)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([state, action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


# --- replay buffer --------------------------------------------------------------------------
class ReplayBuffer:
    """Transitions in the order they happened, so that n-step returns can be read off consecutive rows."""

    FIELDS = ("states", "actions", "rewards", "next_states", "terminals", "lasts")

    def __init__(self, size: int, state_dim: int, action_dim: int) -> None:
        self.states = np.zeros((size, state_dim), np.float32)
        self.actions = np.zeros((size, action_dim), np.float32)
        self.rewards = np.zeros(size, np.float32)
        self.next_states = np.zeros((size, state_dim), np.float32)
        self.terminals = np.zeros(size, np.float32)  # 1 only for real terminal states: time limits bootstrap
        self.lasts = np.zeros(size, np.float32)  # 1 for an episode's last transition, terminal or not
        self.count = 0

    def add(self, state, action, reward, next_state, terminal, last) -> None:
        i = self.count % len(self.rewards)
        self.states[i], self.actions[i], self.rewards[i], self.next_states[i], self.terminals[i], self.lasts[i] = (
            state,
            action,
            reward,
            next_state,
            terminal,
            last,
        )
        self.count += 1

    def sample(self, rng: np.random.Generator, batch_size: int, gamma: float, n_step: int = 1) -> tuple[torch.Tensor, ...]:
        """States, actions, n-step discounted rewards, the states n steps on and their discounts."""
        size = len(self.rewards)
        idx = rng.integers(min(self.count, size), size=batch_size)
        if n_step == 1:
            states, actions, rewards, next_states, terminals = (
                torch.from_numpy(a[idx]) for a in (self.states, self.actions, self.rewards, self.next_states, self.terminals)
            )
            return states, actions, rewards, next_states, gamma * (1 - terminals)
        # Sum rewards along each sampled row's episode until n steps, its end, or the newest row.
        ahead = ((self.count - 1) % size - idx) % size  # rows stored after each sampled one
        rewards, scale, end = np.zeros(batch_size, np.float32), np.ones(batch_size, np.float32), idx.copy()
        going = np.ones(batch_size, bool)
        for k in range(n_step):
            row = (idx + k) % size
            going &= k <= ahead
            rewards += np.where(going, scale * self.rewards[row], 0).astype(np.float32)
            end = np.where(going, row, end)
            scale = np.where(going, scale * np.float32(gamma), scale).astype(np.float32)
            going &= self.lasts[row] == 0
        discounts = scale * (1 - self.terminals[end])
        return tuple(torch.from_numpy(a) for a in (self.states[idx], self.actions[idx], rewards, self.next_states[end], discounts))

    def state_dict(self) -> dict[str, Any]:
        n = min(self.count, len(self.rewards))
        return {"count": self.count, **{k: getattr(self, k)[:n].copy() for k in self.FIELDS}}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.count = int(saved["count"])
        if "lasts" not in saved:  # saved before n-step returns: an episode ends where the next row does not go on from it
            follows = np.all(saved["next_states"][:-1] == saved["states"][1:], axis=1)
            saved = {**saved, "lasts": np.append(~follows, True).astype(np.float32)}
        for k in self.FIELDS:
            getattr(self, k)[: len(saved[k])] = saved[k]


# --- the learner ----------------------------------------------------------------------------
class SAC:
    def __init__(self, config: SACConfig, state_dim: int, action_dim: int) -> None:
        self.config = config
        torch.manual_seed(config.seed)
        self.actor = Actor(state_dim, action_dim, config.hidden)
        self.critic = TwinCritic(state_dim, action_dim, config.hidden)
        self.critic_target = TwinCritic(state_dim, action_dim, config.hidden)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.log_alpha = torch.zeros(1, requires_grad=True)
        self.target_entropy = -float(action_dim) if config.target_entropy is None else config.target_entropy
        # fused: one kernel per step for all tensors; 1.14x the updates/s of the default Adam on one thread (benchmarks/experts.py)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.learning_rate, fused=True)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.learning_rate, fused=True)
        self.alpha_optimizer = torch.optim.Adam([self.log_alpha], lr=config.learning_rate)
        self.generator = torch.Generator().manual_seed(config.seed)

    def act(self, state: np.ndarray, explore: bool, noise: np.ndarray | None = None) -> np.ndarray:
        with torch.no_grad():
            state_t = torch.as_tensor(state)[None]
            noise_t = None if noise is None else torch.as_tensor(noise, dtype=torch.float32)[None]
            action = self.actor.sample(state_t, self.generator, noise_t)[0] if explore else self.actor.deterministic(state_t)
        return action[0].numpy()

    def update(self, batch: tuple[torch.Tensor, ...]) -> dict[str, float]:
        states, actions, rewards, next_states, discounts = batch
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_actions, next_log_prob = self.actor.sample(next_states, self.generator)
            target_q = torch.min(*self.critic_target(next_states, next_actions)) - alpha * next_log_prob
            target = rewards + discounts * target_q
        q1, q2 = self.critic(states, actions)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.critic_optimizer.zero_grad()
        critic_loss.backward()
        self.critic_optimizer.step()

        new_actions, log_prob = self.actor.sample(states, self.generator)
        actor_loss = (alpha * log_prob - torch.min(*self.critic(states, new_actions))).mean()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()

        alpha_loss = -(self.log_alpha * (log_prob.detach() + self.target_entropy)).mean()
        self.alpha_optimizer.zero_grad()
        alpha_loss.backward()
        self.alpha_optimizer.step()

        with torch.no_grad():
            for target_p, p in zip(self.critic_target.parameters(), self.critic.parameters()):
                target_p.lerp_(p, self.config.tau)
        return {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item(), "alpha": alpha.item()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "critic_optimizer": self.critic_optimizer.state_dict(),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.actor.load_state_dict(saved["actor"])
        self.critic.load_state_dict(saved["critic"])
        self.critic_target.load_state_dict(saved["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(saved["log_alpha"])
        self.actor_optimizer.load_state_dict(saved["actor_optimizer"])
        self.critic_optimizer.load_state_dict(saved["critic_optimizer"])
        self.alpha_optimizer.load_state_dict(saved["alpha_optimizer"])
        self.generator.set_state(saved["generator"])


# --- checkpoints ----------------------------------------------------------------------------
TRAIN_STATE = "train_state.pt"
POLICY = "policy.pt"


def save_train_state(run_dir: Path, agent: SAC, buffer: ReplayBuffer, rng: np.random.Generator, progress: dict[str, Any]) -> None:
    state = {
        "config": dataclasses.asdict(agent.config),
        "agent": agent.state_dict(),
        "buffer": buffer.state_dict(),
        "rng": rng.bit_generator.state,
        "progress": progress,
    }
    with atomic_file(run_dir / TRAIN_STATE) as f:
        torch.save(state, f)


def load_train_state(run_dir: Path) -> dict[str, Any] | None:
    """A run folder's saved state (or a train_state.pt file's); None where there is none yet."""
    path = run_dir if run_dir.is_file() else run_dir / TRAIN_STATE
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise UsageError(f"{path} cannot be read ({type(error).__name__}): delete it to start over, or restore it from a backup") from None


def export_policy(run_dir: Path, agent: SAC, extra: dict[str, Any]) -> Path:
    """The deterministic actor in the format `masklam collect --policy PATH` loads."""
    config = agent.config
    state_dim = agent.actor.net[0].in_features
    save_policy_checkpoint(
        run_dir / POLICY, agent.actor.export(config.hidden), config.env_id, state_dim, agent.actor.action_dim, [config.hidden, config.hidden], extra
    )
    return run_dir / POLICY


def load_init_state(config: SACConfig) -> dict[str, Any]:
    """The saved state --init-from names, checked to fit this run: same task and network, room to go on."""
    source = Path(config.init_from)
    if not source.exists():  # checked only here: a run that has its own checkpoint resumes without its source
        raise UsageError(f"--init-from {source} does not exist: pass a run folder (or its {TRAIN_STATE}) of `masklam expert train`")
    saved = load_train_state(source)
    if saved is None:
        raise UsageError(f"--init-from {source} holds no {TRAIN_STATE}: pass a run folder of `masklam expert train` that has saved a checkpoint")
    for name in ("env_id", "hidden"):
        if saved["config"][name] != getattr(config, name):
            raise UsageError(f"--init-from {source} has {name} {saved['config'][name]}, this run {getattr(config, name)}: they must match")
    if saved["progress"]["step"] >= config.total_steps:
        raise UsageError(f"--init-from {source} is already at step {saved['progress']['step']}: --steps counts from the start of that run, so pass more")
    rows, count, size = len(saved["buffer"]["rewards"]), saved["buffer"]["count"], min(config.buffer_size, config.total_steps)
    if size < rows or (count > rows and size != rows):  # a ring that has wrapped goes on only at its own size
        raise UsageError(f"--init-from {source} has a replay buffer of {rows} rows that does not fit this run's {size}: use the same buffer size")
    return saved


# --- evaluation -----------------------------------------------------------------------------
def evaluate(act, env_id: str, episodes: int, seed: int, episode_steps: int = 1000, reset=None) -> np.ndarray:
    """Returns of ``episodes`` episodes of ``act(state) -> action in [-1, 1]`` (deterministic), seeded;
    ``reset()``, if given, starts each episode (a hand-over policy keeps its stage within one)."""
    sim = DMCSimulator(parse_env_id(env_id).task)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))
    low, high = sim.action_low, sim.action_high
    returns = []
    for _ in range(episodes):
        state, total = sim.reset(rng), 0.0
        if reset is not None:
            reset()
        for _ in range(episode_steps):
            step = sim.step(low + (act(state) + 1) / 2 * (high - low))
            state, total = step.state, total + step.reward
            if step.terminated:
                break
        returns.append(total)
    sim.close()
    return np.array(returns)


# --- training -------------------------------------------------------------------------------
def train(config: SACConfig, run_dir: Path, show_progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a run in ``run_dir``; returns the final evaluation."""
    from torch.utils.tensorboard import SummaryWriter

    torch.set_num_threads(config.threads)
    run_dir = Path(run_dir)
    saved = load_train_state(run_dir)
    defaults = {f.name: f.default for f in dataclasses.fields(SACConfig) if f.default is not dataclasses.MISSING}
    if saved is not None and {**defaults, **saved["config"]} != dataclasses.asdict(config):  # settings added later take their defaults
        raise UsageError(f"{run_dir} holds a run with another config: use another --out, or the same settings to resume it")

    if saved is None and config.init_from:
        saved = load_init_state(config)

    sim = DMCSimulator(parse_env_id(config.env_id).task)
    if config.bonus_task:
        sim.reward_of(config.bonus_task)  # a task that does not fit fails here, before anything is written
    if config.height_bonus:
        sim.height_fraction()  # as does a body without a standing height
    if config.max_start_pitch is not None:
        sim.root_pitch()  # and one without a pitch joint
    run_dir.mkdir(parents=True, exist_ok=True)
    low, high = sim.action_low, sim.action_high
    action_dim = len(low)
    agent = SAC(config, sim.state_dim, action_dim)
    buffer = ReplayBuffer(min(config.buffer_size, config.total_steps), sim.state_dim, action_dim)
    rng = np.random.default_rng(config.seed)
    progress = {"step": 0, "episode": 0, "next_eval": config.eval_every, "next_checkpoint": config.checkpoint_every, "wall_seconds": 0.0}
    if saved is not None:
        agent.load_state_dict(saved["agent"])
        buffer.load_state_dict(saved["buffer"])
        rng.bit_generator.state = saved["rng"]
        progress = saved["progress"]

    log = open(run_dir / "metrics.jsonl", "a")
    writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=progress["step"])
    started = time.perf_counter() - progress["wall_seconds"]
    recent_returns: list[float] = []
    bar = tqdm(total=config.total_steps, initial=progress["step"], unit="step", desc=f"expert {config.env_id}", disable=not show_progress or None)

    def record(metrics: dict[str, Any]) -> None:
        log.write(json_line({"step": progress["step"], **metrics}) + "\n")
        log.flush()
        for name, value in metrics.items():
            writer.add_scalar(name, value, progress["step"])

    while progress["step"] < config.total_steps:
        # One episode. Checkpoints happen between episodes, so no simulator state needs saving.
        state, episode_return = sim.reset(rng), 0.0
        while config.max_start_pitch is not None and sim.root_pitch() >= config.max_start_pitch:
            state = sim.reset(rng)
        # colorednoise correlates along the last axis: time
        noise = powerlaw_psd_gaussian(config.noise_color, (action_dim, config.episode_steps), random_state=rng).T if config.noise_color else None
        for t in range(config.episode_steps):
            if progress["step"] < config.learning_starts:
                unit_action = rng.uniform(-1.0, 1.0, action_dim).astype(np.float32)
            else:
                unit_action = agent.act(state, explore=True, noise=None if noise is None else noise[t])
            step = sim.step(low + (unit_action + 1) / 2 * (high - low))
            progress["step"] += 1
            reward = step.reward + config.bonus_weight * sim.reward_of(config.bonus_task) if config.bonus_task else step.reward
            if config.height_bonus:
                reward += config.height_bonus * sim.height_fraction()
            last = step.terminated or t == config.episode_steps - 1 or progress["step"] >= config.total_steps
            buffer.add(state, unit_action, reward, step.state, float(step.terminated), float(last))
            state, episode_return = step.state, episode_return + step.reward
            if progress["step"] >= config.learning_starts:
                losses = agent.update(buffer.sample(rng, config.batch_size, config.gamma, config.n_step))
                if progress["step"] % 1000 == 0:
                    record({**losses, "steps_per_second": progress["step"] / (time.perf_counter() - started)})
            bar.update(1)
            if last:
                break
        progress["episode"] += 1
        recent_returns = (recent_returns + [episode_return])[-10:]
        record({"episode_return": episode_return})
        bar.set_postfix(recent_return=f"{np.mean(recent_returns):.0f}")

        if progress["step"] >= progress["next_eval"] or progress["step"] >= config.total_steps:
            returns = evaluate(lambda s: agent.act(s, explore=False), config.env_id, config.eval_episodes, config.seed + progress["step"], config.episode_steps)
            record({"eval_return_mean": float(returns.mean()), "eval_return_std": float(returns.std())})
            progress["next_eval"] += config.eval_every
        if progress["step"] >= progress["next_checkpoint"] or progress["step"] >= config.total_steps:
            progress["next_checkpoint"] += config.checkpoint_every  # before saving: a resumed run goes on from here
            progress["wall_seconds"] = time.perf_counter() - started
            save_train_state(run_dir, agent, buffer, rng, progress)
            export_policy(run_dir, agent, {"train_steps": progress["step"], "seed": config.seed})
    bar.close()
    writer.close()
    log.close()
    sim.close()
    final = {"env_id": config.env_id, "steps": progress["step"], "wall_seconds": round(time.perf_counter() - started, 1)}
    atomic_write_bytes(run_dir / "final.json", (json.dumps(final, indent=1) + "\n").encode())
    return final
