"""`masklam segment --distill N`: a foundation model labels N frames, a small student learns from them and
labels every frame.

Sampling: every train record gives one run of consecutive frames at a seeded random offset, runs of equal
length adding up to at least N frames, so the N frames spread over all episodes. The teacher segments each run
as it would an episode: the dataset-level prompt on the run's first frame (for `--prompt oracle-box`, one
click per run), then each frame's prompt from the previous mask; its masks are cached per run in
DATASET/segment/<name>/teacher/ so a killed teacher phase resumes. A fifth of the runs (by record) are held out:
the student's IoU against the teacher (and, on simulated data, the oracle) on them is reported. Then the student labels every frame of both
splits, written as a mask source like any other.

The student is a small U-Net (three scales) trained with binary cross-entropy plus soft Dice, seeded;
its weights and report are kept in DATASET/segment/<name>/ so a re-run reuses them.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from masklam.atomic import atomic_file, atomic_write_json
from masklam.data.dataset import open_dataset
from masklam.data.schema import ORACLE, Record
from masklam.errors import UsageError
from masklam.segment.compare import ratio
from masklam.segment.writer import SEGMENT_DIR, MaskFunction


@dataclass(frozen=True)
class DistillConfig:
    frames: int  # N: frames the teacher labels
    steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    width: int = 16
    held_out: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.frames < 10 or self.steps < 1 or self.batch_size < 1 or not 0 < self.held_out < 1:
            raise UsageError("--distill needs at least 10 frames; steps and batch size must be positive")


def block(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, padding=1),
        nn.GroupNorm(4, outputs),
        nn.GELU(),
        nn.Conv2d(outputs, outputs, 3, padding=1),
        nn.GroupNorm(4, outputs),
        nn.GELU(),
    )


class Student(nn.Module):
    """A three-scale U-Net: uint8 frames (B, H, W, 3) -> mask logits (B, H, W); H and W divisible by 4."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.down1, self.down2, self.down3 = block(3, w), block(w, 2 * w), block(2 * w, 4 * w)
        self.up2, self.up1 = block(4 * w + 2 * w, 2 * w), block(2 * w + w, w)
        self.head = nn.Conv2d(w, 1, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float() / 127.5 - 1
        a = self.down1(x)
        b = self.down2(F.max_pool2d(a, 2))
        c = self.down3(F.max_pool2d(b, 2))
        b = self.up2(torch.cat([F.interpolate(c, scale_factor=2.0), b], 1))
        a = self.up1(torch.cat([F.interpolate(b, scale_factor=2.0), a], 1))
        return self.head(a)[:, 0]


def sample_runs(records: list[Record], frames: int, rng: np.random.Generator) -> list[Record]:
    """One run of consecutive frames per record, equal lengths adding up to at least ``frames``."""
    length = max(1, math.ceil(frames / len(records)))
    runs = []
    for index, record in enumerate(records):
        n = min(length, record.meta.frames)
        start = int(rng.integers(0, record.meta.frames - n + 1))
        meta = dataclasses.replace(record.meta, episode=index, chunk=0, start=record.meta.start + start, frames=n)
        steps = {"rgb": record.steps["rgb"][start : start + n]}
        masks = {source: m[start : start + n] for source, m in record.masks.items()}
        runs.append(Record(meta, steps, masks))
    return runs


def iou(prediction: np.ndarray, target: np.ndarray) -> float:
    return ratio(int(np.logical_and(prediction, target).sum()), int(np.logical_or(prediction, target).sum()))


def train_student(frames: np.ndarray, masks: np.ndarray, config: DistillConfig, show_progress: bool) -> Student:
    torch.manual_seed(config.seed)
    student = Student(config.width)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr)
    rng = np.random.default_rng(config.seed)
    images, targets = torch.from_numpy(frames), torch.from_numpy(masks).float()
    for _ in tqdm(range(config.steps), unit="step", desc="distil student", disable=not show_progress or None):
        pick = torch.from_numpy(rng.integers(0, len(images), config.batch_size))
        batch, target = images[pick], targets[pick]
        if rng.random() < 0.5:  # left-right flips: the agent faces both ways
            batch, target = batch.flip(2), target.flip(2)
        logits = student(batch)
        probability = logits.sigmoid()
        dice = 1 - (2 * (probability * target).sum() + 1) / (probability.sum() + target.sum() + 1)
        loss = F.binary_cross_entropy_with_logits(logits, target) + dice
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return student.eval()


@torch.no_grad()
def predict(student: Student, frames: np.ndarray, batch_size: int = 256) -> np.ndarray:
    out = [(student(torch.from_numpy(frames[i : i + batch_size])) > 0).numpy() for i in range(0, len(frames), batch_size)]
    return np.concatenate(out).astype(np.uint8)


def student_function(student: Student) -> MaskFunction:
    def label(records: Iterator[Record]) -> Iterator[np.ndarray]:
        for record in records:
            yield predict(student, record.steps["rgb"])

    return label


def teacher_labels(folder: Path, runs: list[Record], teacher: MaskFunction, key: dict[str, Any], show_progress: bool) -> list[np.ndarray]:
    """The teacher's masks of each run, cached one file per run in ``folder`` (written atomically): with a
    foundation model on a CPU the teacher phase takes hours, and a killed job resumes at the first missing run.
    The cache belongs to one teacher and one sampling (``key``); another one starts it afresh."""
    key_path = folder / "key.json"
    if not key_path.is_file() or json.loads(key_path.read_text()) != json.loads(json.dumps(key)):
        for old in folder.glob("run-*.npy"):
            old.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(key_path, key)
    labels = []
    for index, run in enumerate(tqdm(runs, unit="run", desc="teacher", disable=not show_progress or None)):
        path = folder / f"run-{index:05d}.npy"
        if path.is_file():
            labels.append(np.load(path))
            continue
        masks = next(iter(teacher(iter([run]))))  # each run is its own chain: labelled alone, as in one pass
        with atomic_file(path) as f:
            np.save(f, masks)
        labels.append(masks)
    return labels


def distill(
    data: str | Path,
    name: str,
    teacher: MaskFunction,
    reads: tuple[str, ...],
    config: DistillConfig,
    show_progress: bool = True,
    teacher_key: dict[str, Any] | None = None,
) -> tuple[MaskFunction, dict[str, Any]]:
    """Train (or reload) the student for source ``name``; its mask function and report. ``teacher_key`` says
    which teacher labelled the cached runs (its description in info.json)."""
    dataset = open_dataset(data)
    folder = Path(dataset.root) / SEGMENT_DIR / name
    weights, report_path = folder / "student.pt", folder / "distill.json"
    if weights.exists() and report_path.exists():
        report = json.loads(report_path.read_text())
        if report["config"] == dataclasses.asdict(config):
            student = Student(config.width)
            student.load_state_dict(torch.load(weights, weights_only=True))
            return student_function(student.eval()), report
    size = dataset.info["env"]["render"]["size"]
    if size % 4:
        raise UsageError(f"--distill needs an image size divisible by 4 (the dataset's is {size})")
    rng = np.random.default_rng(config.seed)
    records = list(dataset.records("train", mask_sources=tuple(set(reads) | ({ORACLE} & set(dataset.info["mask_sources"]))), fields=("rgb",)))
    runs = sample_runs(records, config.frames, rng)
    labels = teacher_labels(folder / "teacher", runs, teacher, {"config": dataclasses.asdict(config), "teacher": teacher_key}, show_progress)
    order = rng.permutation(len(runs))
    held = set(order[: max(1, round(config.held_out * len(runs)))].tolist())
    if len(held) == len(runs):
        raise UsageError("--distill needs at least 2 train records (one is held out to score the student)")
    train = [i for i in range(len(runs)) if i not in held]
    frames = np.concatenate([runs[i].steps["rgb"] for i in train])
    masks = np.concatenate([labels[i] for i in train])
    student = train_student(frames, masks, config, show_progress)
    held_frames = np.concatenate([runs[i].steps["rgb"] for i in sorted(held)])
    held_masks = np.concatenate([labels[i] for i in sorted(held)])
    report = {
        "config": dataclasses.asdict(config),
        "teacher_frames": int(sum(len(m) for m in labels)),
        "train_frames": int(len(frames)),
        "held_out_frames": int(len(held_frames)),
        "student_iou_vs_teacher": round(iou(predict(student, held_frames), held_masks), 4),
    }
    if all(ORACLE in runs[i].masks for i in held):
        oracle = np.concatenate([runs[i].masks[ORACLE] for i in sorted(held)])
        report["student_iou_vs_oracle"] = round(iou(predict(student, held_frames), oracle), 4)
        report["teacher_iou_vs_oracle"] = round(iou(held_masks, oracle), 4)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(weights) as f:
        torch.save(student.state_dict(), f)
    atomic_write_json(report_path, report)
    return student_function(student), report
