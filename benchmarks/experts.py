"""Environment steps/s and SAC gradient updates/s of the expert trainer on this machine, in one run.

    python benchmarks/experts.py --env dmc:cheetah-run

Prints a markdown table for docs/performance.md. The ratio column compares each figure with the
environment's own stepping rate, which bounds how fast any trainer can collect experience.
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


def updates_per_second(env_id: str, updates: int, threads: int, hidden: int, batch_size: int) -> float:
    torch.set_num_threads(threads)
    sim = DMCSimulator(parse_env_id(env_id).task)
    state_dim, action_dim = sim.state_dim, len(sim.action_low)
    agent = SAC(SACConfig(env_id, hidden=hidden, batch_size=batch_size), state_dim, action_dim)
    buffer = ReplayBuffer(10_000, state_dim, action_dim)
    rng = np.random.default_rng(0)
    for _ in range(10_000):
        buffer.add(rng.normal(size=state_dim), rng.uniform(-1, 1, action_dim), rng.normal(), rng.normal(size=state_dim), 0.0)
    for _ in range(20):  # warm-up
        agent.update(buffer.sample(rng, batch_size))
    start = time.perf_counter()
    for _ in range(updates):
        agent.update(buffer.sample(rng, batch_size))
    return updates / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="dmc:cheetah-run")
    parser.add_argument("--updates", type=int, default=1000)
    args = parser.parse_args()
    env_rate = env_steps_per_second(args.env, 20_000)
    rows = [("environment steps (physics only, random actions)", "-", env_rate)]
    for threads in (1, 2):
        for hidden, batch in ((256, 256), (1024, 1024)):
            rate = updates_per_second(args.env, args.updates if hidden == 256 else max(50, args.updates // 20), threads, hidden, batch)
            rows.append((f"SAC updates, MLP {hidden}x2, batch {batch}", threads, rate))
    print(f"{args.env}; {torch.get_num_threads()} torch threads available")
    print()
    print("| what | torch threads | per second | × env steps/s |")
    print("|---|---|---|---|")
    for name, threads, rate in rows:
        print(f"| {name} | {threads} | {rate:.0f} | {rate / env_rate:.3f} |")


if __name__ == "__main__":
    main()
