"""Prompts: one per episode, on its first frame; later frames are prompted from the previous frame's mask.

Nobody clicks on every frame. An episode's first frame gets the dataset-level prompt: points
(``--point x,y`` positive, ``--point neg:x,y`` negative) and/or a box (``--box x0,y0,x1,y1``), in
the dataset's pixel coordinates; or, for simulated data, ``--prompt oracle-box``: the box of the oracle mask
of the episode's first frame only (one click per episode, emulated). Every later frame is prompted with the
previous frame's predicted mask: its bounding box plus a few positive points inside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from masklam.data.schema import ORACLE, Record
from masklam.errors import UsageError

ORACLE_BOX = "oracle-box"
FOLLOW_POINTS = 3  # positive points taken inside the previous mask


@dataclass(frozen=True)
class Prompt:
    """Points (x, y) with labels (1 positive, 0 negative) and/or a box (x0, y0, x1, y1), in pixels."""

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if len(self.points) != len(self.labels):
            raise ValueError("one label per point")

    @property
    def empty(self) -> bool:
        return not self.points and self.box is None

    def scaled(self, factor: float) -> Prompt:
        return Prompt(
            tuple((x * factor, y * factor) for x, y in self.points), self.labels,
            None if self.box is None else tuple(v * factor for v in self.box),
        )


@dataclass(frozen=True)
class PromptSpec:
    """The dataset-level prompt of the command line."""

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    oracle_box: bool = False
    follow_points: int = FOLLOW_POINTS

    def first(self, oracle_first_mask: np.ndarray | None) -> Prompt:
        """The prompt of an episode's first frame."""
        if self.oracle_box:
            if oracle_first_mask is None:
                raise UsageError("--prompt oracle-box needs the dataset's oracle masks")
            box = mask_box(oracle_first_mask)
            return Prompt(box=box) if box is not None else Prompt()
        return Prompt(self.points, self.labels, self.box)

    def describe(self) -> dict:
        if self.oracle_box:
            return {"prompt": ORACLE_BOX, "follow_points": self.follow_points}
        return {"points": [list(p) for p in self.points], "labels": list(self.labels), "box": list(self.box) if self.box else None, "follow_points": self.follow_points}


def parse_prompt(points: list[str], box: str | None, prompt: str | None) -> PromptSpec:
    """--point x,y (positive) or --point neg:x,y (negative), --box x0,y0,x1,y1, --prompt oracle-box."""
    if prompt is not None and prompt != ORACLE_BOX:
        raise UsageError(f"unknown --prompt {prompt!r}: the only named prompt is {ORACLE_BOX}")
    if prompt == ORACLE_BOX and (points or box):
        raise UsageError("--prompt oracle-box replaces --point and --box: pass one or the other")
    parsed, labels = [], []
    for text in points:
        negative = text.startswith("neg:")
        parsed.append(numbers(text.removeprefix("neg:"), 2, "--point", "x,y or neg:x,y"))
        labels.append(0 if negative else 1)
    spec = PromptSpec(tuple(parsed), tuple(labels), numbers(box, 4, "--box", "x0,y0,x1,y1") if box else None, prompt == ORACLE_BOX)
    if not spec.oracle_box and not any(labels) and spec.box is None:
        raise UsageError("no prompt: pass --point x,y (repeatable), --box x0,y0,x1,y1, or --prompt oracle-box for simulated data")
    return spec


def numbers(text: str, count: int, flag: str, form: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise UsageError(f"{flag} {text!r}: expected {form}")
    return values


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """The bounding box (x0, y0, x1, y1) of a mask's pixels, None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def follow(mask: np.ndarray, points: int = FOLLOW_POINTS) -> Prompt:
    """The prompt for the next frame from this frame's mask: its box and ``points`` positive points inside it,
    the pixels deepest inside the mask (farthest from its edge), spread apart. Empty mask: empty prompt."""
    box = mask_box(mask)
    if box is None:
        return Prompt()
    from scipy.ndimage import distance_transform_edt

    depth = distance_transform_edt(np.pad(mask.astype(bool), 1))[1:-1, 1:-1]
    chosen: list[tuple[float, float]] = []
    for _ in range(points):
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        if depth[y, x] <= 0:
            break
        chosen.append((float(x), float(y)))  # pixel indices: SAM's prompt encoder adds the half pixel
        yy, xx = np.ogrid[: depth.shape[0], : depth.shape[1]]
        depth[(yy - y) ** 2 + (xx - x) ** 2 <= max(4.0, depth[y, x] ** 2)] = 0  # spread the next points apart
    return Prompt(tuple(chosen), (1,) * len(chosen), box)


class PromptChain:
    """Masks for the records of a shard, one episode at a time: the episode's first frame gets the dataset-level
    prompt, every later frame a prompt from the mask before it; a chunk continues its episode's chain.

    A model supplies ``encode(frames)`` (a batch of frames -> one feature per frame) and
    ``decode(feature, prompt, frame_size)`` (one frame's feature as a batch of one -> an (H, W) uint8 mask);
    frames are encoded ``batch_size`` at a time.
    """

    def __init__(self, prompts: PromptSpec, batch_size: int = 1) -> None:
        self.prompts, self.batch_size = prompts, batch_size

    def encode(self, frames: np.ndarray):  # pragma: no cover - implemented by each model
        raise NotImplementedError

    def decode(self, feature, prompt: Prompt, frame_size: int) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def next_prompt(self, first: Prompt, previous: np.ndarray | None) -> Prompt:
        """The prompt of a frame: from the mask before it, or ``first`` at the start or when the agent was lost."""
        prompt = first if previous is None else follow(previous, self.prompts.follow_points)
        return first if prompt.empty else prompt

    def segment(self, frames: np.ndarray, first: Prompt, previous: np.ndarray | None = None) -> np.ndarray:
        """Masks (T, H, W) of consecutive frames; the first frame is prompted by ``first`` (or by ``previous``,
        the mask of the frame before it), every later one by the mask before it."""
        masks = []
        for start in range(0, len(frames), self.batch_size):
            for feature in self.encode(frames[start : start + self.batch_size]):
                previous = self.decode(feature[None], self.next_prompt(first, previous), frames.shape[1])
                masks.append(previous)
        return np.stack(masks)

    def __call__(self, records: Iterator[Record]) -> Iterator[np.ndarray]:
        last = None  # (episode, chunk, the episode's first prompt, last mask) of the record before
        for record in records:
            meta, frames = record.meta, record.steps["rgb"]
            if last is not None and last[:2] == (meta.episode, meta.chunk - 1):
                # A later chunk's first frame is the previous chunk's last: continue the chain from its mask.
                first, previous = last[2], last[3]
            else:
                oracle = record.masks.get(ORACLE)
                first, previous = self.prompts.first(None if oracle is None else oracle[0]), None
            masks = self.segment(frames, first, previous)
            last = (meta.episode, meta.chunk, first, masks[-1])
            yield masks


