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
from masklam.devices import device_of
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
    # Share of training frames whose background is replaced (the teacher's agent pixels over a procedural
    # texture or another frame's background), so the student learns the agent, not the training videos.
    composite: float = 0.6
    # Frames of the test split the teacher labels too (never trained on): the student's agreement with its teacher
    # on videos it never saw, which a user without a simulator can read as well.
    test_frames: int = 32

    def __post_init__(self) -> None:
        if self.frames < 10 or self.steps < 1 or self.batch_size < 1 or not 0 < self.held_out < 1:
            raise UsageError("--distill needs at least 10 frames; steps and batch size must be positive")
        if self.test_frames < 0:
            raise UsageError(f"--distill-test-frames {self.test_frames}: give 0 (none) or more frames")
        if not 0 <= self.composite <= 1:
            raise UsageError(f"--distill-composite {self.composite}: give a share of frames between 0 and 1")


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


def textures(count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` procedural backgrounds (count, size, size, 3) uint8: coloured 1/f^a noise, a between 1 and 3
    (from fine grain to smooth blobs, as natural images and videos have), each with its own colours."""
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.rfftfreq(size), indexing="ij")
    radius = np.maximum(np.hypot(fy, fx), 1.0 / size)
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        spectrum = rng.normal(size=(3, *radius.shape)) + 1j * rng.normal(size=(3, *radius.shape))
        noise = np.fft.irfft2(spectrum / radius ** rng.uniform(1.0, 3.0), s=(size, size))  # (3, size, size)
        noise = (noise - noise.mean(axis=(1, 2), keepdims=True)) / (noise.std() + 1e-8)
        mix = rng.normal(size=(3, 3)) * rng.uniform(20, 70)  # correlated channels: coloured, not grey, noise
        image = np.einsum("cij,cd->ijd", noise, mix) + rng.uniform(30, 225, size=3)
        out[i] = np.clip(image, 0, 255).astype(np.uint8)
    return out


def erase_agent(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Backgrounds of labelled frames: each frame's agent pixels (grown by 2 px) filled from the same frame
    shifted by half its width, so the agent's own colours do not stay behind as an unlabelled agent."""
    from scipy.ndimage import binary_dilation

    grown = binary_dilation(masks.astype(bool), iterations=2, structure=np.ones((1, 3, 3), bool))
    shifted = np.roll(frames, frames.shape[2] // 2, axis=2)
    return np.where(grown[..., None], shifted, frames)


class Composer:
    """Training batches that do not let the student learn the training backgrounds: a share of the frames get
    their background replaced (the agent's pixels kept, by the teacher's mask) by a procedural texture or the
    agent-free background of another labelled frame; then every frame gets a colour jitter (per-channel gain
    and offset) and a small zoom and shift, and half are flipped left-right (the agent faces both ways)."""

    def __init__(self, frames: np.ndarray, masks: np.ndarray, composite: float, rng: np.random.Generator, bank: int = 256) -> None:
        self.frames, self.masks = torch.from_numpy(frames), torch.from_numpy(masks).float()
        self.composite, self.rng = composite, rng
        if composite > 0:  # what composites are made of; nothing to prepare without them
            self.backgrounds = torch.from_numpy(erase_agent(frames, masks))
            self.textures = torch.from_numpy(textures(bank, frames.shape[1], rng))

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = self.rng
        pick = torch.from_numpy(rng.integers(0, len(self.frames), size))
        images, target = self.frames[pick].float(), self.masks[pick]
        if self.composite > 0:
            swap = torch.from_numpy(rng.random(size) < self.composite)
            texture = torch.from_numpy(rng.random(size) < 0.5)
            other = self.backgrounds[torch.from_numpy(rng.integers(0, len(self.backgrounds), size))].float()
            noise = self.textures[torch.from_numpy(rng.integers(0, len(self.textures), size))].float()
            background = torch.where(texture[:, None, None, None], noise, other)
            agent = target[..., None]
            images = torch.where(swap[:, None, None, None], agent * images + (1 - agent) * background, images)
        gain = torch.from_numpy(rng.uniform(0.75, 1.25, (size, 1, 1, 3))).float()
        offset = torch.from_numpy(rng.uniform(-25, 25, (size, 1, 1, 3))).float()
        images = (images * gain + offset).clamp(0, 255)
        # Zoom 0.9-1.1 and shift up to 6 % of the side, one draw per frame; the mask moves with its frame.
        scale = torch.from_numpy(rng.uniform(0.9, 1.1, size)).float()
        shift = torch.from_numpy(rng.uniform(-0.12, 0.12, (size, 2))).float()
        flip = torch.from_numpy(np.where(rng.random(size) < 0.5, -1.0, 1.0)).float()
        theta = torch.zeros(size, 2, 3)
        theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = scale * flip, scale, shift
        grid = F.affine_grid(theta, (size, 4, *images.shape[1:3]), align_corners=False)
        stacked = torch.cat([images.permute(0, 3, 1, 2), target[:, None]], 1)
        warped = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return warped[:, :3].permute(0, 2, 3, 1), (warped[:, 3] > 0.5).float()


def train_student(
    frames: np.ndarray, masks: np.ndarray, config: DistillConfig, show_progress: bool, desc: str = "distil student", device: str = "cpu"
) -> Student:
    """Batches are composed on the CPU from the seed, so a device changes where the student computes only."""
    torch.manual_seed(config.seed)
    student = Student(config.width).to(device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr)
    composer = Composer(frames, masks, config.composite, np.random.default_rng(config.seed))
    for _ in tqdm(range(config.steps), unit="step", desc=desc, disable=not show_progress or None):
        batch, target = composer.batch(config.batch_size)
        batch, target = batch.to(device, non_blocking=True), target.to(device, non_blocking=True)
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
    device = device_of(student)
    out = [(student(torch.from_numpy(frames[i : i + batch_size]).to(device)) > 0).cpu().numpy() for i in range(0, len(frames), batch_size)]
    return np.concatenate(out).astype(np.uint8)


def student_function(student: Student) -> MaskFunction:
    def label(records: Iterator[Record]) -> Iterator[np.ndarray]:
        for record in records:
            yield predict(student, record.steps["rgb"])

    return label


CACHED = ("run-*.npy", "test-run-*.npy", "record-*.npy", "marked-*.npz", "proposer.pt", "marked.json")  # what the teacher's cache holds


def open_teacher_cache(folder: Path, key: dict[str, Any]) -> Path:
    """The teacher's cache folder, emptied of masklam's cached files when they were made by another teacher or
    sampling (``key``): with a foundation model on a CPU the teacher phase takes hours, so it is kept otherwise."""
    key_path = folder / "key.json"
    if not key_path.is_file() or json.loads(key_path.read_text()) != json.loads(json.dumps(key)):
        for pattern in CACHED:
            for old in folder.glob(pattern):
                old.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(key_path, key)
    return folder


def teacher_labels(folder: Path, runs: list[Record], teacher: MaskFunction, show_progress: bool, prefix: str = "run") -> list[np.ndarray]:
    """The teacher's masks of each run, cached one file per run in ``folder`` (written atomically, see
    ``open_teacher_cache``): a killed job resumes at the first missing run."""
    # Each run is its own chain: labelled alone, as in one pass.
    return [
        cached_masks(folder / f"{prefix}-{index:05d}.npy", teacher, run)
        for index, run in enumerate(tqdm(runs, unit="run", desc="teacher", disable=not show_progress or None))
    ]


def cached_masks(path: Path, make_masks: MaskFunction, record: Record) -> np.ndarray:
    """``make_masks``' masks of one record, read from ``path`` if an earlier run saved them, else made and saved
    atomically (a killed job leaves no partial file)."""
    if path.is_file():
        return np.load(path)
    masks = next(iter(make_masks(iter([record]))))
    with atomic_file(path) as f:
        np.save(f, masks)
    return masks


def teacher_on_splits(student: MaskFunction, teacher: MaskFunction, splits: tuple[str, ...], folder: Path) -> MaskFunction:
    """Records of ``splits`` labelled by the teacher (cached one file per record in ``folder``, so a killed job
    resumes), the others by the student. Each record is its own chain (a chunked episode's chain restarts)."""

    def label(records: Iterator[Record]) -> Iterator[np.ndarray]:
        for record in records:
            if record.meta.split not in splits:
                yield next(iter(student(iter([record]))))
            else:
                yield cached_masks(folder / f"record-{record.meta.split}-{record.key}.npy", teacher, record)

    return label


def cache_key(config: DistillConfig | None, teacher: dict[str, Any] | None) -> dict[str, Any]:
    return {"config": None if config is None else dataclasses.asdict(config), "teacher": teacher}


def held_out_count(config: DistillConfig, runs: int) -> int:
    """Runs (one per train record) held out to score the student."""
    return max(1, round(config.held_out * runs))


def check_distill(config: DistillConfig, records: int, size: int, data: str | Path) -> None:
    """What distilling this dataset needs, checked from its metadata before any teacher labels a frame."""
    if size % 4:
        raise UsageError(f"--distill needs an image size divisible by 4 (the dataset's is {size})")
    held = held_out_count(config, records)
    if held >= records:  # 1 record: the one held out to score the student leaves none to train it on
        raise UsageError(
            f"--distill needs at least 2 train records (it holds out {held} to score the student, and trains on the rest); "
            f"{data} has {records}: collect more episodes, or cut them into records with collect --chunk-steps"
        )


def distill(
    data: str | Path,
    name: str,
    teacher: MaskFunction,
    reads: tuple[str, ...],
    config: DistillConfig,
    show_progress: bool = True,
    teacher_key: dict[str, Any] | None = None,
    device: str = "cpu",
) -> tuple[Student, dict[str, Any]]:
    """Train (or reload) the student for source ``name``; the student and its report. ``teacher_key``
    says which teacher labelled the cached runs (its description in info.json)."""
    dataset = open_dataset(data)
    folder = Path(dataset.root) / SEGMENT_DIR / name
    weights, report_path = folder / "student.pt", folder / "distill.json"
    if weights.exists() and report_path.exists():
        report = json.loads(report_path.read_text())
        if report["config"] == dataclasses.asdict(config):
            student = Student(config.width)
            student.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            return student.to(device).eval(), report
    check_distill(config, len(dataset.index("train")), dataset.info["env"]["render"]["size"], data)
    rng = np.random.default_rng(config.seed)
    records = list(dataset.records("train", mask_sources=tuple(set(reads) | ({ORACLE} & set(dataset.info["mask_sources"]))), fields=("rgb",)))
    runs = sample_runs(records, config.frames, rng)
    order = rng.permutation(len(runs))
    held = set(order[: held_out_count(config, len(runs))].tolist())
    cache = open_teacher_cache(folder / "teacher", cache_key(config, teacher_key))
    labels = teacher_labels(cache, runs, teacher, show_progress)
    train = [i for i in range(len(runs)) if i not in held]
    frames = np.concatenate([runs[i].steps["rgb"] for i in train])
    masks = np.concatenate([labels[i] for i in train])
    student = train_student(frames, masks, config, show_progress, device=device)
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
    if config.test_frames and "test" in dataset.info["splits"]:
        report["test_sample"] = test_sample(dataset, student, teacher, reads, config, cache, show_progress)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(weights) as f:
        torch.save(student.state_dict(), f)
    atomic_write_json(report_path, report)
    return student.eval(), report


def test_sample(dataset, student: Student, teacher: MaskFunction, reads: tuple[str, ...], config: DistillConfig, cache: Path, show_progress: bool) -> dict:
    """The student against its teacher (and the oracle, where there is one) on runs of test-split frames: videos
    the student never saw. Teacher masks cached like the training runs'."""
    sources = tuple(set(reads) | ({ORACLE} & set(dataset.info["mask_sources"])))
    runs = sample_runs(list(dataset.records("test", mask_sources=sources, fields=("rgb",))), config.test_frames, np.random.default_rng(config.seed + 1))
    labels = np.concatenate(teacher_labels(cache, runs, teacher, show_progress, prefix="test-run"))
    frames = np.concatenate([run.steps["rgb"] for run in runs])
    predicted = predict(student, frames)
    sample = {"frames": int(len(frames)), "student_iou_vs_teacher": round(iou(predicted, labels), 4)}
    if all(ORACLE in run.masks for run in runs):
        oracle = np.concatenate([run.masks[ORACLE] for run in runs])
        sample["student_iou_vs_oracle"] = round(iou(predicted, oracle), 4)
        sample["teacher_iou_vs_oracle"] = round(iou(labels, oracle), 4)
    return sample
