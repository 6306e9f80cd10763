"""Frames/s of masklam's batched SAM inference against the naive per-image predictor loop on the same model,
and of a distilled student against that teacher, in one run.

    python benchmarks/segment.py --frames 16

Needs the sam extra. The model has the architecture of the official ViT-B release with random weights (no
weights can be downloaded here; speed does not depend on the values). Frames are 64 px cheetah-run frames with
distractors from a freshly collected dataset. The naive loop is segment-anything's own `SamPredictor`:
`set_image` then `predict` with a box, one frame at a time, as a user would write it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from masklam.data.collect import CollectConfig, collect
from masklam.data.dataset import open_dataset
from masklam.envs.spec import EnvSpec, RenderSpec, distractor_preset
from masklam.segment.distill import Student, predict
from masklam.segment.prompts import Prompt, mask_box, parse_prompt
from masklam.segment.sam import SamArchitecture, SamSegmenter

VIT_B = SamArchitecture(
    image_size=1024,
    patch_size=16,
    embed_dim=768,
    depth=12,
    num_heads=12,
    window_size=14,
    global_attn_indexes=(2, 5, 8, 11),
    decoder_depth=2,
    decoder_mlp_dim=2048,
)


def frames_and_boxes(count: int) -> tuple[np.ndarray, list]:
    root = Path(tempfile.mkdtemp()) / "data"
    env = EnvSpec("dmc:cheetah-run", RenderSpec(size=64), distractor_preset("low"), episode_steps=count)
    collect(CollectConfig(env=env, episodes=1, test_episodes=0), root, show_progress=False)
    record = next(open_dataset(root).records("train"))
    frames, masks = record.steps["rgb"][:count], record.masks["oracle"][:count]
    return frames, [mask_box(m) for m in masks]


def naive_rate(model: torch.nn.Module, frames: np.ndarray, boxes: list) -> float:
    from segment_anything import SamPredictor

    predictor = SamPredictor(model)
    start = time.perf_counter()
    for frame, box in zip(frames, boxes):
        predictor.set_image(frame)
        predictor.predict(box=np.array(box), multimask_output=False)
    return len(frames) / (time.perf_counter() - start)


def batched_rate(model: torch.nn.Module, frames: np.ndarray, box, batch_size: int) -> float:
    segmenter = SamSegmenter(model, parse_prompt([], ",".join(str(v) for v in box), None), batch_size=batch_size)
    start = time.perf_counter()
    segmenter.segment(frames, Prompt(box=box))
    return len(frames) / (time.perf_counter() - start)


def student_rate(frames: np.ndarray, repeats: int = 20) -> float:
    student = Student().eval()
    many = np.concatenate([frames] * repeats)
    predict(student, many[:8])  # warm-up
    start = time.perf_counter()
    predict(student, many)
    return len(many) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = VIT_B.build().eval()
    frames, boxes = frames_and_boxes(args.frames)
    with torch.no_grad():
        SamSegmenter(model, parse_prompt(["1,1"], None, None)).encode(frames[:1])  # warm-up
    naive = naive_rate(model, frames, boxes)
    batched = {size: batched_rate(model, frames, boxes[0], size) for size in sorted({1, args.batch_size})}
    student = student_rate(frames)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.frames} frames of 64 px; SAM ViT-B architecture, random weights\n")
    print("| inference | frames/s | × naive loop |")
    print("|---|---|---|")
    print(f"| SamPredictor, one frame at a time (set_image + predict) | {naive:.3f} | 1.00 |")
    for size, rate in batched.items():
        print(f"| masklam, batch {size}, mask-following prompts | {rate:.3f} | {rate / naive:.2f} |")
    print(f"| distilled student (U-Net, width 16) | {student:.0f} | {student / naive:.0f} |")


if __name__ == "__main__":
    main()
