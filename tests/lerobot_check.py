"""LeRobot's own code on datasets the tests give it, run in a Python that has ``lerobot`` (not masklam's).

lerobot cannot be installed beside masklam's test extras, so the tests run this script in the LeRobot venv
that ``scripts/lerobot_venv.sh`` makes (see docs/install.md) and assert on what it prints and saves. It imports
lerobot, torch and numpy only, never masklam.

    python tests/lerobot_check.py load OUT_DIR ROOT[=VIDEO_BACKEND] ...
        LeRobotDataset(root=ROOT, video_backend=VIDEO_BACKEND) for each ROOT; every item's tensors, stacked
        over the dataset, saved as OUT_DIR/<i>.npz (i: the ROOT's position); prints JSON: the versions and,
        per ROOT, episodes, frames, fps, tasks and the error (its type and message) if LeRobot raised one.
    python tests/lerobot_check.py write ROOT
        LeRobotDataset.create / add_frame / save_episode / finalize: three short episodes of a pushed
        block, a video camera, an image camera, state and action; prints JSON: episodes and frames.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np


def versions() -> dict:
    import torchvision

    found = {name: version(name) for name in ("lerobot", "torch", "torchvision", "av", "datasets", "huggingface-hub")}
    # LeRobot 0.4.4's "pyav" video backend is torchvision.io.VideoReader, gone from torchvision 0.26 on
    return {**found, "video_reader": hasattr(torchvision.io, "VideoReader")}


def load(out: Path, roots: list[str]) -> dict:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    results = []
    for position, argument in enumerate(roots):
        root, _, backend = argument.partition("=")
        result: dict = {"root": root, "video_backend": backend or None, "error": None}
        try:
            dataset = LeRobotDataset("masklam/check", root=root, video_backend=backend or None)
            items = [dataset[i] for i in range(len(dataset))]
            arrays = {key: torch.stack([item[key] for item in items]).numpy() for key, value in items[0].items() if isinstance(value, torch.Tensor)}
            np.savez(out / f"{position}.npz", **arrays)
            result |= {"episodes": dataset.num_episodes, "frames": len(dataset), "fps": dataset.fps, "tasks": [item["task"] for item in items]}
        except Exception as error:  # reported to the test, which says whether it may fail here
            result["error"] = f"{type(error).__name__}: {error}"
        results.append(result)
    return {"versions": versions(), "datasets": results}


def write(root: Path) -> dict:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.images.front": {"dtype": "video", "shape": (48, 64, 3), "names": ["height", "width", "channels"]},
        "observation.images.wrist": {"dtype": "image", "shape": (24, 24, 3), "names": ["height", "width", "channels"]},
        "observation.state": {"dtype": "float32", "shape": (3,), "names": ["x", "y", "gripper"]},
        "action": {"dtype": "float32", "shape": (2,), "names": ["dx", "dy"]},
    }
    made = LeRobotDataset.create("local/arm", fps=10, features=features, root=root, use_videos=True)
    rng = np.random.default_rng(0)
    for episode in range(3):
        x = 20
        for _t in range(8 + episode):
            frame = np.full((48, 64, 3), 40, np.uint8)
            x = int(np.clip(x + rng.integers(-3, 4), 6, 58))
            frame[10:30, x - 6 : x + 6] = (250, 200, 30)
            made.add_frame(
                {
                    "observation.images.front": frame,
                    "observation.images.wrist": frame[::2, ::2][:24, :24].copy(),
                    "observation.state": np.array([x, 20, episode], np.float32),
                    "action": rng.normal(size=2).astype(np.float32),
                    "task": "push the block" if episode < 2 else "wave",
                }
            )
        made.save_episode()
    made.finalize()
    return {"versions": versions(), "episodes": made.meta.total_episodes, "frames": made.meta.total_frames}


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    if command == "load":
        report = load(Path(arguments[0]), arguments[1:])
    elif command == "write":
        report = write(Path(arguments[0]))
    else:
        raise SystemExit(f"unknown command {command!r}: load or write")
    print(json.dumps(report))
