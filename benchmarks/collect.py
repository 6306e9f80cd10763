"""Frames/s of `masklam collect` next to a bare step-and-render loop, in one run.

The bare loop is what one would write by hand: step the suite's own environment with random
actions and render each frame in colour and as segmentation with mujoco.Renderer, at the same
size and visual settings, keeping nothing. `masklam collect` does that plus distractors,
agent masks, episode bookkeeping and writing shards.

    python benchmarks/collect.py --env dmc:cheetah-run --frames 16000

The bare loop runs before and after the collect runs; their mean is the baseline (their spread
shows how much the machine drifted). Collect rates are end to end, start-up included (spawning
workers and building their environments, about 2 s); the start-up alone is reported too.
Prints a markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np

from masklam.data.collect import CollectConfig, collect
from masklam.envs.dmc import DMCSimulator
from masklam.envs.metaworld import MetaWorldSimulator
from masklam.envs.sim import disable_costly_visuals
from masklam.envs.spec import EnvSpec, RenderSpec, distractor_preset, parse_env_id


def bare_loop(env_id: str, size: int, frames: int, episode_steps: int) -> float:
    """Frames/s of stepping and rendering RGB + segmentation, nothing else."""
    parsed = parse_env_id(env_id)
    sim = DMCSimulator(parsed.task) if parsed.suite == "dmc" else MetaWorldSimulator(parsed.task)
    disable_costly_visuals(sim.model, shadows=False, multisampling=False, reflections=False)
    renderer = mujoco.Renderer(sim.model, size, size)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    done = 0
    while done < frames:
        sim.reset(rng)
        for _ in range(episode_steps):
            sim.step(rng.uniform(sim.action_low, sim.action_high))
            renderer.update_scene(sim.data, camera=sim.camera)
            renderer.render()
            renderer.enable_segmentation_rendering()
            renderer.render()
            renderer.disable_segmentation_rendering()
            done += 1
    elapsed = time.perf_counter() - start
    renderer.close()
    sim.close()
    return done / elapsed


def collect_rate(env_id: str, size: int, frames: int, episode_steps: int, preset: str, backend: str, workers: int) -> float:
    episodes = max(workers * 2, round(frames / episode_steps))
    config = CollectConfig(
        env=EnvSpec(env_id, RenderSpec(size=size), distractor_preset(preset), episode_steps=episode_steps),
        backend=backend,
        episodes=episodes,
        test_episodes=0,
        episodes_per_shard=max(1, episodes // (workers * 2)),
    )
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        collect(config, out, workers=workers, show_progress=False)
        elapsed = time.perf_counter() - start
    return episodes * (episode_steps + 1) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="dmc:cheetah-run")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=16000)
    parser.add_argument("--episode-steps", type=int, default=250)
    parser.add_argument("--backend", default="webdataset")
    args = parser.parse_args()

    bare_frames = args.frames // 2
    bare_before = bare_loop(args.env, args.size, bare_frames, args.episode_steps)
    runs = []
    for preset in ("none", "low"):
        for workers in (1, 2):
            rate = collect_rate(args.env, args.size, args.frames, args.episode_steps, preset, args.backend, workers)
            runs.append((f"masklam collect --distractors {preset} --backend {args.backend}", workers, rate))
    bare_after = bare_loop(args.env, args.size, bare_frames, args.episode_steps)
    bare = (bare_before + bare_after) / 2
    rows = [(f"bare loop (step + RGB + segmentation render; {bare_before:.0f} before, {bare_after:.0f} after)", 1, bare), *runs]
    startup = {}
    for workers in (1, 2):
        start = time.perf_counter()
        collect_rate(args.env, args.size, 2 * workers, 1, "none", args.backend, workers)
        startup[workers] = time.perf_counter() - start

    print(
        f"{args.env}, {args.size} px, {args.frames} frames, episodes of {args.episode_steps} steps; {os.cpu_count()} cores, {platform.processor() or platform.machine()}"
    )
    print()
    print("| run | workers | frames/s | × bare loop |")
    print("|---|---|---|---|")
    for name, workers, rate in rows:
        print(f"| {name} | {workers} | {rate:.0f} | {rate / bare:.2f} |")
    print()
    print("start-up (a collect of 1-step episodes): " + ", ".join(f"{w} worker(s) {t:.1f} s" for w, t in startup.items()))


if __name__ == "__main__":
    main()
