"""Environment steps/s and SAC gradient updates/s of the expert trainer on this machine, in one run.

    python benchmarks/experts.py --env dmc:cheetah-run

Prints a markdown table for docs/performance.md. The ratio column compares each figure with the
environment's own stepping rate, which bounds how fast any trainer can collect experience; the
"foreach" rows are the baseline for the trainer's fused Adam, measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from masklam.envs.dmc import DMCSimulator
from masklam.envs.spec import parse_env_id
from masklam.experts.sac import SAC, ReplayBuffer, SACConfig


def env_steps_per_second(env_id: str, steps: int) -> float:
    sim = DMCSimulator(parse_env_id(env_id).task)
    rng = np.random.default_rng(0)
    sim.reset(rng)
    start = time.perf_counter()
    for i in range(steps):
        sim.step(rng.uniform(sim.action_low, sim.action_high))
        if (i + 1) % 1000 == 0:
            sim.reset(rng)
    return steps / (time.perf_counter() - start)


def updates_per_second(env_id: str, updates: int, threads: int, hidden: int, batch_size: int, adam: str = "fused", n_step: int = 1) -> float:
    torch.set_num_threads(threads)
    sim = DMCSimulator(parse_env_id(env_id).task)
    state_dim, action_dim = sim.state_dim, len(sim.action_low)
    config = SACConfig(env_id, hidden=hidden, batch_size=batch_size, n_step=n_step)
    agent = SAC(config, state_dim, action_dim)
    if adam == "foreach":  # the baseline: torch's default Adam, a kernel per operation over the tensor list
        agent.actor_optimizer = torch.optim.Adam(agent.actor.parameters(), lr=config.learning_rate, foreach=True)
        agent.critic_optimizer = torch.optim.Adam(agent.critic.parameters(), lr=config.learning_rate, foreach=True)
    buffer = ReplayBuffer(10_000, state_dim, action_dim)
    rng = np.random.default_rng(0)
    for i in range(10_000):
        buffer.add(rng.normal(size=state_dim), rng.uniform(-1, 1, action_dim), rng.normal(), rng.normal(size=state_dim), 0.0, (i + 1) % 1000 == 0)
    for _ in range(20):  # warm-up
        agent.update(buffer.sample(rng, batch_size, config.gamma, n_step))
    start = time.perf_counter()
    for _ in range(updates):
        agent.update(buffer.sample(rng, batch_size, config.gamma, n_step))
    return updates / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="dmc:cheetah-run")
    parser.add_argument("--updates", type=int, default=1000)
    args = parser.parse_args()
    env_rate = env_steps_per_second(args.env, 20_000)
    rows = [("environment steps (physics only, random actions)", "-", env_rate)]
    for threads in (1, 2):
        for adam in ("foreach", "fused"):
            rows.append((f"SAC updates, MLP 256x2, batch 256, {adam} Adam", threads, updates_per_second(args.env, args.updates, threads, 256, 256, adam)))
        rows.append(
            ("SAC updates, MLP 256x2, batch 256, fused Adam, 3-step returns", threads, updates_per_second(args.env, args.updates, threads, 256, 256, n_step=3))
        )
        rows.append(
            ("SAC updates, MLP 1024x2, batch 1024, fused Adam", threads, updates_per_second(args.env, max(50, args.updates // 20), threads, 1024, 1024))
        )
    print(f"{args.env}; {torch.get_num_threads()} torch threads available")
    print()
    print("| what | torch threads | per second | × env steps/s |")
    print("|---|---|---|---|")
    for name, threads, rate in rows:
        print(f"| {name} | {threads} | {rate:.0f} | {rate / env_rate:.3f} |")


if __name__ == "__main__":
    main()
