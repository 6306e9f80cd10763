"""One click per dataset: the user marks the agent on one frame (or a few), masklam finds it on every frame.

No simulator says where the agent is on a user's video, and one prompt on every episode's first frame assumes
the agent always starts in the same place. Instead the user marks the agent once (``--on SPLIT/EPISODE/FRAME``
with ``--point``/``--box``, or a ``--prompts`` file keyed by SPLIT/EPISODE/FRAME), and:

1. the teacher (a SAM-family model) segments each marked frame from its prompt and follows the mask over the
   next ``MARK_RUN - 1`` frames of that episode (mask-following is reliable over a few frames);
2. a *proposer* student (masklam.segment.distill's U-Net, trained on those few masks with backgrounds replaced,
   so it learns the agent and not the marked episode's background) proposes the agent on any frame;
3. every chain the teacher runs starts from the proposer's mask of its first frame (its largest region's box
   and inner points) instead of a fixed prompt, and a frame whose followed mask is refused is prompted afresh
   from the proposer's mask of that frame;
4. the agent's colours on the marked frames (against their background's) tell whether a mask still covers the
   agent: a mask that slid onto a background region of the same size and place is refused too
   (``Appearance.slid``) and counted.

Results are cached in the teacher's folder (``segment/<name>/teacher/``): the marked frames' masks and the
proposer's weights, keyed with the teacher's runs, so a killed job resumes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from masklam.atomic import atomic_file, atomic_write_json
from masklam.data.dataset import Dataset
from masklam.data.schema import Record
from masklam.segment.prompts import Mark, PromptChain, PromptSpec, Track, iou

MARK_RUN = 8  # frames the teacher follows from each marked frame to train the proposer
PROPOSER_STEPS = 600  # training steps of the proposer, at most the student's (it only has to find the agent: the teacher draws the mask)
BINS = 8  # colour levels per channel of the appearance histograms (8^3 bins)
SLIDE_SHARE = 0.5  # a mask whose agent-coloured share is under this fraction of the marked frames' is refused


class Appearance:
    """What the agent looks like on the marked frames: the colour bins more frequent on the agent than on its
    background. ``agent_share(frame, mask)`` is the fraction of a mask's pixels in those bins."""

    def __init__(self, frames: np.ndarray, masks: np.ndarray) -> None:
        bins = quantise(frames)
        on = masks.astype(bool)
        agent = np.bincount(bins[on], minlength=BINS**3) + 1.0
        background = np.bincount(bins[~on], minlength=BINS**3) + 1.0
        self.agent_bins = agent / agent.sum() > background / background.sum()
        shares = [self.agent_share(f, m) for f, m in zip(frames, masks) if m.any()]
        self.reference = float(np.median(shares)) if shares else 0.0

    def agent_share(self, frame: np.ndarray, mask: np.ndarray) -> float:
        on = mask.astype(bool)
        return float(self.agent_bins[quantise(frame)[on]].mean()) if on.any() else 0.0

    def slid(self, frame: np.ndarray, mask: np.ndarray) -> bool:
        return self.agent_share(frame, mask) < SLIDE_SHARE * self.reference


def quantise(frames: np.ndarray) -> np.ndarray:
    levels = (frames.astype(np.int64) * BINS) // 256
    return (levels[..., 0] * BINS + levels[..., 1]) * BINS + levels[..., 2]


def mark_frames(dataset: Dataset, mark: Mark) -> np.ndarray:
    """The marked frame and up to MARK_RUN - 1 frames after it, in its episode."""
    record = dataset.episode(mark.split, mark.episode, mask_sources=())
    return record.steps["rgb"][mark.frame : mark.frame + MARK_RUN]


class MarkedSegmenter:
    """A mask function (records -> masks) that runs the teacher's chain on every record, each chain started and
    re-prompted from the proposer's masks and checked against the agent's appearance."""

    def __init__(self, teacher: PromptChain, proposer, appearance: Appearance, fallback: Mark) -> None:
        self.teacher, self.proposer, self.appearance, self.fallback = teacher, proposer, appearance, fallback

    @property
    def counts(self) -> dict[str, int]:
        return self.teacher.counts

    def track(self, frames: np.ndarray, carried: Track | None = None) -> Track:
        """The chain's state for these frames: a new episode's (or ``carried`` on), with the proposer's masks."""
        from masklam.segment.distill import predict

        track = carried if carried is not None else Track(self.fallback.prompt, appearance=self.appearance)
        track.proposals = predict(self.proposer, frames)
        return track

    def __call__(self, records: Iterator[Record]) -> Iterator[np.ndarray]:
        last = None
        for record in records:
            meta, frames = record.meta, record.steps["rgb"]
            continues = last is not None and last[:2] == (meta.episode, meta.chunk - 1)
            track = self.track(frames, last[2] if continues else None)  # a later chunk continues its episode's chain
            masks = self.teacher.segment(frames, track)
            last = (meta.episode, meta.chunk, track)
            yield masks


def train_proposer(frames: np.ndarray, masks: np.ndarray, config, show_progress: bool):
    """The proposer: the distilled student's network and recipe, on the marked frames, for PROPOSER_STEPS at most."""
    from masklam.segment.distill import train_student

    return train_student(frames, masks, dataclasses.replace(config, steps=min(PROPOSER_STEPS, config.steps)), show_progress, desc="proposer")


def one_click(
    dataset: Dataset, teacher: PromptChain, prompts: PromptSpec, config, folder: Path, show_progress: bool
) -> tuple[MarkedSegmenter, dict[str, float | int]]:
    """The teacher's masks of the marked frames, the proposer trained on them and the agent's appearance (cached
    in ``folder``, which belongs to one teacher and one set of marks); the mask function that uses them."""
    from masklam.segment.distill import Student, predict

    folder.mkdir(parents=True, exist_ok=True)
    frames, masks = [], []
    for index, mark in enumerate(prompts.marks):
        path = folder / f"marked-{index:03d}.npz"
        if path.is_file():
            saved = np.load(path)
            frames.append(saved["frames"])
            masks.append(saved["masks"])
            continue
        run = mark_frames(dataset, mark)
        labels = teacher.segment(run, Track(mark.prompt))
        with atomic_file(path) as f:
            np.savez(f, frames=run, masks=labels)
        frames.append(run)
        masks.append(labels)
    frames, masks = np.concatenate(frames), np.concatenate(masks)
    weights = folder / "proposer.pt"
    proposer = Student(config.width)
    if weights.is_file():
        proposer.load_state_dict(torch.load(weights, weights_only=True))
        proposer.eval()
    else:
        proposer = train_proposer(frames, masks, config, show_progress)
        with atomic_file(weights) as f:
            torch.save(proposer.state_dict(), f)
    appearance = Appearance(frames, masks)
    agreement = float(np.mean([iou(p, m) for p, m in zip(predict(proposer, frames), masks)]))
    report = {"marked_frames": len(prompts.marks), "teacher_frames_marked": int(len(frames)), "proposer_iou_on_marked": round(agreement, 4)}
    report["appearance_reference"] = round(appearance.reference, 4)
    atomic_write_json(folder / "marked.json", report)
    return MarkedSegmenter(teacher, proposer, appearance, prompts.marks[0]), report
