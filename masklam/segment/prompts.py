"""Prompts: one per episode, on its first frame; later frames are prompted from the previous frame's mask.

Nobody clicks on every frame. An episode's first frame gets the dataset-level prompt: points
(``--point x,y`` positive, ``--point neg:x,y`` negative) and/or a box (``--box x0,y0,x1,y1``), in
the dataset's pixel coordinates; or one per episode from a small file (``--prompts FILE``, JSON or CSV); or
``--prompt auto``: no human at all, SAM's most confident whole object near the centre of the first frame
(see ``PromptChain.auto_prompt``); or, for simulated data, ``--prompt oracle-box``: the box of the oracle mask of the episode's
first frame only (one click per episode, emulated). Every later frame is prompted with the previous frame's
predicted mask: its bounding box plus a few positive points inside it. A mask that comes out empty, jumps
(area or centroid far from the mask before) or drifts (area far from the episode's first mask) is refused:
the frame is prompted afresh with the episode's first prompt, and if that fails too the mask before is kept.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from masklam.data.schema import ORACLE, Record
from masklam.errors import UsageError

ORACLE_BOX = "oracle-box"
AUTO = "auto"
NAMED_PROMPTS = (ORACLE_BOX, AUTO)
FOLLOW_POINTS = 3  # positive points taken inside the previous mask
# A followed mask is refused (re-prompted) when its area changes by more than this factor from the mask before,
JUMP_AREA = 2.0
# its centroid moves more than this fraction of the frame's size from the mask before,
JUMP_CENTROID = 0.15
# or its area is this factor away from the episode's first mask (the chain crept onto the ground or background).
DRIFT_AREA = 3.0


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
            tuple((x * factor, y * factor) for x, y in self.points),
            self.labels,
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
    auto: bool = False  # --prompt auto: chosen by the model among its own candidates (PromptChain.auto_prompt)
    per_episode: tuple[tuple[int, Prompt], ...] = ()  # --prompts FILE: (episode, prompt) pairs
    default: Prompt | None = None  # --prompts FILE's "*": for episodes the file does not list
    source: str | None = None  # the --prompts file's name, for info.json
    reprompt: bool = True  # refuse masks that jump or drift (see JUMP_AREA, JUMP_CENTROID, DRIFT_AREA)

    def first(self, oracle_first_mask: np.ndarray | None, episode: int | None = None) -> Prompt:
        """The prompt of an episode's first frame (empty for --prompt auto: the chain picks it)."""
        if self.oracle_box:
            if oracle_first_mask is None:
                raise UsageError("--prompt oracle-box needs the dataset's oracle masks")
            box = mask_box(oracle_first_mask)
            return Prompt(box=box) if box is not None else Prompt()
        if self.per_episode or self.default is not None:
            prompt = dict(self.per_episode).get(episode, self.default)
            if prompt is None:
                raise UsageError(f'--prompts {self.source} has no prompt for episode {episode} (add it, or a "*" entry for every other episode)')
            return prompt
        return Prompt(self.points, self.labels, self.box)

    def describe(self) -> dict:
        common = {"follow_points": self.follow_points, "reprompt": self.reprompt}
        if self.oracle_box:
            return {"prompt": ORACLE_BOX, **common}
        if self.auto:
            return {"prompt": AUTO, **common}
        if self.source is not None:
            return {"prompts_file": self.source, "episodes": len(self.per_episode), **common}
        return {"points": [list(p) for p in self.points], "labels": list(self.labels), "box": list(self.box) if self.box else None, **common}


def parse_prompt(points: list[str], box: str | None, prompt: str | None, prompts_file: str | None = None, reprompt: bool = True) -> PromptSpec:
    """--point x,y (positive) or --point neg:x,y (negative), --box x0,y0,x1,y1, --prompts FILE, --prompt oracle-box|auto."""
    if prompt is not None and prompt not in NAMED_PROMPTS:
        raise UsageError(f"unknown --prompt {prompt!r}: choose {' or '.join(NAMED_PROMPTS)}")
    if sum((prompt is not None, bool(points or box), prompts_file is not None)) > 1:
        raise UsageError("pass one kind of prompt: --point/--box, --prompts FILE, or --prompt oracle-box|auto")
    if prompts_file is not None:
        per_episode, default = read_prompts_file(Path(prompts_file))
        return PromptSpec(per_episode=per_episode, default=default, source=Path(prompts_file).name, reprompt=reprompt)
    parsed, labels = [], []
    for text in points:
        negative = text.startswith("neg:")
        parsed.append(numbers(text.removeprefix("neg:"), 2, "--point", "x,y or neg:x,y"))
        labels.append(0 if negative else 1)
    spec = PromptSpec(
        tuple(parsed), tuple(labels), numbers(box, 4, "--box", "x0,y0,x1,y1") if box else None, prompt == ORACLE_BOX, auto=prompt == AUTO, reprompt=reprompt
    )
    if not (spec.oracle_box or spec.auto) and not any(labels) and spec.box is None:
        raise UsageError(
            "no prompt: pass --point x,y (repeatable), --box x0,y0,x1,y1, --prompts FILE, --prompt auto, or --prompt oracle-box for simulated data"
        )
    return spec


def read_prompts_file(path: Path) -> tuple[tuple[tuple[int, Prompt], ...], Prompt | None]:
    """Prompts per episode. JSON: {"0": {"box": [x0, y0, x1, y1]}, "1": {"points": [[x, y], ...], "labels": [1, 0]},
    "*": {...}} ("*": every episode not listed; labels default to positive). CSV with a header: episode,x0,y0,x1,y1
    (a box per row) or episode,x,y[,label] (a point per row, several rows per episode allowed); episode may be *."""
    if not path.is_file():
        raise UsageError(f"--prompts {path}: no such file")
    try:
        if path.suffix.lower() == ".json":
            entries = {key: prompt_of(value, f"--prompts {path} [{key!r}]") for key, value in json.loads(path.read_text()).items()}
        elif path.suffix.lower() == ".csv":
            entries = csv_prompts(path)
        else:
            raise UsageError(f"--prompts {path}: expected a .json or .csv file")
    except (json.JSONDecodeError, AttributeError, KeyError, UnicodeDecodeError, csv.Error) as error:
        raise UsageError(f"--prompts {path} cannot be read ({type(error).__name__}: {error})") from None
    default = entries.pop("*", None)
    try:
        per_episode = tuple(sorted((int(key), prompt) for key, prompt in entries.items()))
    except ValueError:
        raise UsageError(f"--prompts {path}: episodes are numbers (or * for every other one), got {sorted(entries)}") from None
    if not per_episode and default is None:
        raise UsageError(f"--prompts {path} has no prompt")
    return per_episode, default


def prompt_of(entry: dict, where: str) -> Prompt:
    try:
        points = tuple((float(x), float(y)) for x, y in entry.get("points", ()))
        labels = tuple(int(v) for v in entry.get("labels", (1,) * len(points)))
        box = tuple(float(v) for v in entry["box"]) if entry.get("box") is not None else None
        prompt = Prompt(points, labels, box)
    except (TypeError, ValueError) as error:
        raise UsageError(f'{where}: expected {{"box": [x0, y0, x1, y1]}} and/or {{"points": [[x, y], ...], "labels": [1, ...]}} ({error})') from None
    if (box is not None and len(box) != 4) or (not any(labels) and box is None) or set(labels) - {0, 1}:
        raise UsageError(f"{where}: a box of 4 numbers or at least one positive point (labels 1 positive, 0 negative)")
    return prompt


def csv_prompts(path: Path) -> dict[str, Prompt]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    entries: dict[str, dict] = {}
    for row in rows:
        entry = entries.setdefault(row["episode"].strip(), {"points": [], "labels": []})
        if {"x0", "y0", "x1", "y1"} <= columns:
            entry["box"] = [row[k] for k in ("x0", "y0", "x1", "y1")]
        elif {"x", "y"} <= columns:
            entry["points"].append([row["x"], row["y"]])
            entry["labels"].append(row.get("label") or 1)
        else:
            raise UsageError(f"--prompts {path}: the CSV header is episode,x0,y0,x1,y1 (boxes) or episode,x,y[,label] (points)")
    return {key: prompt_of(value, f"--prompts {path} episode {key}") for key, value in entries.items()}


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


def mask_stats(mask: np.ndarray) -> tuple[float, float, float]:
    """(area, centroid x, centroid y) of a mask, in pixels."""
    ys, xs = np.nonzero(mask)
    return (float(len(ys)), float(xs.mean()), float(ys.mean())) if len(ys) else (0.0, 0.0, 0.0)


@dataclass
class Track:
    """One episode's chain: its first prompt, the last accepted mask and the stats of its first mask."""

    first: Prompt
    previous: np.ndarray | None = None
    anchor: tuple[float, float, float] | None = None
    reprompts: int = 0  # frames whose followed mask was refused
    held: int = 0  # frames where the first prompt failed too and the mask before was kept


class PromptChain:
    """Masks for the records of a shard, one episode at a time: the episode's first frame gets the dataset-level
    prompt, every later frame a prompt from the mask before it; a chunk continues its episode's chain.

    A model supplies ``encode(frames)`` (a batch of frames -> one feature per frame) and
    ``decode(feature, prompt, frame_size)`` (one frame's feature as a batch of one -> an (H, W) uint8 mask);
    frames are encoded ``batch_size`` at a time. ``--prompt auto`` also needs ``candidates(feature, prompt,
    frame_size)`` (all of the model's proposals for a prompt, with their predicted IoU).
    """

    def __init__(self, prompts: PromptSpec, batch_size: int = 1) -> None:
        self.prompts, self.batch_size = prompts, batch_size
        self.reprompts = self.held = 0  # counted over every episode, for the caller's report

    def encode(self, frames: np.ndarray):  # pragma: no cover - implemented by each model
        raise NotImplementedError

    def decode(self, feature, prompt: Prompt, frame_size: int) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def candidates(self, feature, prompt: Prompt, frame_size: int) -> tuple[np.ndarray, np.ndarray]:
        raise UsageError(f"--prompt {AUTO} needs a model masklam decodes itself (mobile_sam, sam_vit_*), not {type(self).__name__}")

    def next_prompt(self, first: Prompt, previous: np.ndarray | None) -> Prompt:
        """The prompt of a frame: from the mask before it, or ``first`` at the start or when the agent was lost."""
        prompt = first if previous is None else follow(previous, self.prompts.follow_points)
        return first if prompt.empty else prompt

    def plausible(self, mask: np.ndarray, track: Track, followed: bool = True) -> bool:
        """Whether a mask may be the agent still: not empty, no drift from the episode's first mask (area) and, for a
        followed mask, no jump from the mask before (area, centroid). A fresh prompt's mask is not held to the mask
        before, which may be the one that drifted."""
        if not self.prompts.reprompt or track.previous is None or track.anchor is None:
            return True
        area, x, y = mask_stats(mask)
        before, bx, by = mask_stats(track.previous)
        if area == 0:
            return False
        size = max(mask.shape)
        jump = followed and before > 0 and (max(area / before, before / area) > JUMP_AREA or np.hypot(x - bx, y - by) > JUMP_CENTROID * size)
        drift = max(area / track.anchor[0], track.anchor[0] / area) > DRIFT_AREA
        return not (jump or drift)

    def step(self, feature, track: Track, frame_size: int) -> np.ndarray:
        """One frame's mask from its feature: followed from the mask before, re-prompted when that is implausible."""
        mask = self.decode(feature[None], self.next_prompt(track.first, track.previous), frame_size)
        if track.previous is not None and not self.plausible(mask, track):
            track.reprompts += 1
            mask = self.decode(feature[None], track.first, frame_size) if not track.first.empty else mask
            if not self.plausible(mask, track, followed=False):
                track.held += 1
                mask = track.previous  # the agent rarely vanishes: keep the last good mask until a prompt finds it
        if track.anchor is None and mask.any():
            track.anchor = mask_stats(mask)
        track.previous = mask
        return mask

    def features(self, frames: np.ndarray) -> Iterator:
        for start in range(0, len(frames), self.batch_size):
            yield from self.encode(frames[start : start + self.batch_size])

    def segment(self, frames: np.ndarray, first: Prompt | Track, previous: np.ndarray | None = None) -> np.ndarray:
        """Masks (T, H, W) of consecutive frames; the first frame is prompted by ``first`` (or by ``previous``,
        the mask of the frame before it), every later one by the mask before it. ``first`` may be a Track, which
        then carries the chain on (chunks of one episode)."""
        track = first if isinstance(first, Track) else Track(first, previous)
        masks = []
        for feature in self.features(frames):
            if track.previous is None and self.prompts.auto and track.first.empty:
                track.first = self.auto_prompt(feature, frames.shape[1])
            masks.append(self.step(feature, track, frames.shape[1]))
        self.reprompts += track.reprompts
        self.held += track.held
        track.reprompts = track.held = 0
        return np.stack(masks)

    def auto_prompt(self, feature, frame_size: int) -> Prompt:
        """No human: a grid of single-point prompts on the first frame gives SAM's candidate masks (three per
        point); of those neither tiny nor most of the frame, the prompt is the box and inner points of the one
        scoring highest on (SAM's predicted IoU) x (1/2 per frame side it touches) x (1 - its centroid's distance
        from the frame's centre, in frame sizes, L1). That is a prior, not a detector: the agent is a whole
        object, in view and near the centre (DMC's cameras track it). Measured against the oracle in
        docs/segment.md; candidates scored on how they move over the first frames did worse (the floor and the
        background video move too)."""
        size = frame_size
        step = size / AUTO_GRID
        best, best_score = None, -1.0
        for gy in range(AUTO_GRID):
            for gx in range(AUTO_GRID):
                point = Prompt((((gx + 0.5) * step, (gy + 0.5) * step),), (1,))
                masks, quality = self.candidates(feature[None], point, size)
                for mask, q in zip(masks, quality):
                    if not AUTO_AREA[0] <= mask.mean() <= AUTO_AREA[1]:
                        continue
                    x0, y0, x1, y1 = mask_box(mask)
                    sides = (x0 <= 0) + (y0 <= 0) + (x1 >= mask.shape[1]) + (y1 >= mask.shape[0])
                    _, cx, cy = mask_stats(mask)
                    centre = abs(cx / mask.shape[1] - 0.5) + abs(cy / mask.shape[0] - 0.5)
                    score = float(q) * 0.5**sides * max(0.0, 1.0 - centre)
                    if score > best_score:
                        best, best_score = mask, score
        return Prompt() if best is None else follow(best, self.prompts.follow_points)

    def __call__(self, records: Iterator[Record]) -> Iterator[np.ndarray]:
        last = None  # (episode, chunk, the episode's track) of the record before
        for record in records:
            meta, frames = record.meta, record.steps["rgb"]
            if last is not None and last[:2] == (meta.episode, meta.chunk - 1):
                # A later chunk's first frame is the previous chunk's last: continue the chain from its mask.
                track = last[2]
            else:
                oracle = record.masks.get(ORACLE)
                track = Track(self.prompts.first(None if oracle is None else oracle[0], meta.episode))
            masks = self.segment(frames, track)
            last = (meta.episode, meta.chunk, track)
            yield masks


AUTO_GRID = 8  # points per side of the first frame's prompt grid
AUTO_AREA = (0.003, 0.4)  # candidate masks cover this share of the frame


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0
