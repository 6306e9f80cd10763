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
from typing import Any

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
class Mark:
    """The user's prompt on one frame of the dataset: SPLIT/EPISODE/FRAME (frame within the episode)."""

    split: str
    episode: int
    frame: int
    prompt: Prompt

    @property
    def key(self) -> str:
        return f"{self.split}/{self.episode}/{self.frame}"


def frame_key(text: str, where: str) -> tuple[str, int, int]:
    """'train/0/12' -> ('train', 0, 12)."""
    parts = str(text).strip().split("/")
    try:
        split, episode, frame = parts[0], int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        raise UsageError(f"{where}: a frame is SPLIT/EPISODE/FRAME, e.g. train/0/0 (got {text!r})") from None
    if len(parts) != 3 or not split or episode < 0 or frame < 0:
        raise UsageError(f"{where}: a frame is SPLIT/EPISODE/FRAME with episode and frame from 0, e.g. train/0/0 (got {text!r})")
    return split, episode, frame


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
    marks: tuple[Mark, ...] = ()  # --on SPLIT/EPISODE/FRAME or a --prompts file keyed so: one click carried everywhere

    @property
    def marked(self) -> bool:
        """One click per dataset (masklam.segment.marked): prompts on chosen frames, not on each episode's first."""
        return bool(self.marks)

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
        if self.marks:
            marks = {
                m.key: {"points": [list(p) for p in m.prompt.points], "labels": list(m.prompt.labels), "box": list(m.prompt.box) if m.prompt.box else None}
                for m in self.marks
            }
            return {"prompt": "marked", "marks": marks, **({"prompts_file": self.source} if self.source else {}), **common}
        if self.oracle_box:
            return {"prompt": ORACLE_BOX, **common}
        if self.auto:
            return {"prompt": AUTO, **common}
        if self.source is not None:
            return {"prompts_file": self.source, "episodes": len(self.per_episode), **common}
        return {"points": [list(p) for p in self.points], "labels": list(self.labels), "box": list(self.box) if self.box else None, **common}


def parse_prompt(
    points: list[str], box: str | None, prompt: str | None, prompts_file: str | None = None, reprompt: bool = True, on: str | None = None
) -> PromptSpec:
    """--point x,y (positive) or --point neg:x,y (negative), --box x0,y0,x1,y1, --prompts FILE, --prompt oracle-box|auto;
    --on SPLIT/EPISODE/FRAME: the --point/--box prompt marks that one frame (one click for the whole dataset)."""
    if prompt is not None and prompt not in NAMED_PROMPTS:
        raise UsageError(f"unknown --prompt {prompt!r}: choose {' or '.join(NAMED_PROMPTS)}")
    if sum((prompt is not None, bool(points or box), prompts_file is not None)) > 1:
        raise UsageError("pass one kind of prompt: --point/--box, --prompts FILE, or --prompt oracle-box|auto")
    if on is not None and not (points or box):
        raise UsageError("--on SPLIT/EPISODE/FRAME says which frame the prompt marks: give the prompt with --point x,y and/or --box x0,y0,x1,y1")
    if prompts_file is not None:
        per_episode, default, marks = read_prompts_file(Path(prompts_file))
        return PromptSpec(per_episode=per_episode, default=default, source=Path(prompts_file).name, reprompt=reprompt, marks=marks)
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
    if on is not None:
        split, episode, frame = frame_key(on, "--on")
        spec = PromptSpec(reprompt=reprompt, marks=(Mark(split, episode, frame, Prompt(spec.points, spec.labels, spec.box)),))
    return spec


def read_prompts_file(path: Path) -> tuple[tuple[tuple[int, Prompt], ...], Prompt | None, tuple[Mark, ...]]:
    """Prompts per episode. JSON: {"0": {"box": [x0, y0, x1, y1]}, "1": {"points": [[x, y], ...], "labels": [1, 0]},
    "*": {...}} ("*": every episode not listed; labels default to positive). CSV with a header: episode,x0,y0,x1,y1
    (a box per row) or episode,x,y[,label] (a point per row, several rows per episode allowed); episode may be *.
    Keys of the form SPLIT/EPISODE/FRAME ("train/0/0") mark single frames instead (one click per dataset, carried
    everywhere by masklam.segment.marked); a file holds one kind of key or the other."""
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
    framed = [key for key in entries if "/" in key]
    if framed:
        if len(framed) != len(entries):
            raise UsageError(f"--prompts {path}: keys are all SPLIT/EPISODE/FRAME (marked frames) or all episodes, not both")
        marks = tuple(Mark(*frame_key(key, f"--prompts {path}"), prompt) for key, prompt in entries.items())
        return (), None, tuple(sorted(marks, key=lambda m: (m.split, m.episode, m.frame)))
    default = entries.pop("*", None)
    try:
        per_episode = tuple(sorted((int(key), prompt) for key, prompt in entries.items()))
    except ValueError:
        raise UsageError(f"--prompts {path}: episodes are numbers (or * for every other one), got {sorted(entries)}") from None
    if not per_episode and default is None:
        raise UsageError(f"--prompts {path} has no prompt")
    return per_episode, default, ()


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


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The mask's largest 8-connected region (a student's stray pixels elsewhere dropped)."""
    from scipy.ndimage import label

    regions, count = label(mask.astype(bool), structure=np.ones((3, 3), bool))
    if count <= 1:
        return mask.astype(np.uint8)
    sizes = np.bincount(regions.ravel())[1:]
    return (regions == 1 + int(np.argmax(sizes))).astype(np.uint8)


MIN_PROPOSAL = 4  # pixels: a smaller proposed region is noise, not an agent


def proposal_prompt(mask: np.ndarray) -> Prompt:
    """A prompt from a student's proposed mask: the box and inner points of its largest region; empty if none."""
    region = largest_component(mask)
    return follow(region) if region.sum() >= MIN_PROPOSAL else Prompt()


def mask_stats(mask: np.ndarray) -> tuple[float, float, float]:
    """(area, centroid x, centroid y) of a mask, in pixels."""
    ys, xs = np.nonzero(mask)
    return (float(len(ys)), float(xs.mean()), float(ys.mean())) if len(ys) else (0.0, 0.0, 0.0)


@dataclass
class Track:
    """One episode's chain: its first prompt, the last accepted mask and the stats of its first mask.

    With one click per dataset (masklam.segment.marked) a track also carries, for the frames of the record being
    segmented, the student's proposed masks (a fresh prompt for any frame, better than the episode's first
    prompt once the agent has moved) and the agent's appearance (a check that the mask still covers the agent's
    colours, catching a chain that slid onto a background region of the same size and place)."""

    first: Prompt
    previous: np.ndarray | None = None
    anchor: tuple[float, float, float] | None = None
    reprompts: int = 0  # frames whose followed mask was refused
    held: int = 0  # frames where the first prompt failed too and the mask before was kept
    proposals: np.ndarray | None = None  # (T, H, W) the student's masks of this record's frames
    appearance: Any = None  # masklam.segment.marked.Appearance: agent_share(frame, mask) -> fraction in [0, 1]
    index: int = 0  # frame of the record being segmented
    slides: int = 0  # frames whose mask was refused for not looking like the agent

    def fresh(self) -> Prompt:
        """The prompt for a frame that needs one afresh: the student's proposal for it, else the first prompt."""
        if self.proposals is not None:
            proposed = proposal_prompt(self.proposals[self.index])
            if not proposed.empty:
                return proposed
        return self.first


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
        self.reprompts = self.held = self.slides = 0  # counted over every episode, for the caller's report

    @property
    def counts(self) -> dict[str, int]:
        """Frames re-prompted, kept from the frame before, and refused for not looking like the agent."""
        return {"reprompted": self.reprompts, "held": self.held, "slid": self.slides}

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

    def plausible(self, mask: np.ndarray, track: Track, followed: bool = True, frame: np.ndarray | None = None) -> bool:
        """Whether a mask may be the agent still: not empty, no drift from the episode's first mask (area) and, for a
        followed mask, no jump from the mask before (area, centroid). A fresh prompt's mask is not held to the mask
        before, which may be the one that drifted. Where the track knows the agent's appearance, a mask whose
        pixels are mostly not the agent's colours has slid off it (counted in ``track.slides``)."""
        if not self.prompts.reprompt or track.previous is None or track.anchor is None:
            return True
        if track.appearance is not None and frame is not None and mask.any() and track.appearance.slid(frame, mask):
            track.slides += 1
            return False
        area, x, y = mask_stats(mask)
        before, bx, by = mask_stats(track.previous)
        if area == 0:
            return False
        size = max(mask.shape)
        jump = followed and before > 0 and (max(area / before, before / area) > JUMP_AREA or np.hypot(x - bx, y - by) > JUMP_CENTROID * size)
        drift = max(area / track.anchor[0], track.anchor[0] / area) > DRIFT_AREA
        return not (jump or drift)

    def step(self, feature, track: Track, frame_size: int, frame: np.ndarray | None = None) -> np.ndarray:
        """One frame's mask from its feature: followed from the mask before, re-prompted when that is implausible."""
        mask = self.decode(feature[None], self.next_prompt(track.fresh(), track.previous), frame_size)
        if track.previous is not None and not self.plausible(mask, track, frame=frame):
            track.reprompts += 1
            fresh = track.fresh()
            mask = self.decode(feature[None], fresh, frame_size) if not fresh.empty else mask
            if not self.plausible(mask, track, followed=False, frame=frame):
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
        for index, feature in enumerate(self.features(frames)):
            if track.previous is None and self.prompts.auto and track.first.empty:
                track.first = self.auto_prompt(feature, frames.shape[1])
            track.index = index
            masks.append(self.step(feature, track, frames.shape[1], frames[index]))
        self.reprompts += track.reprompts
        self.held += track.held
        self.slides += track.slides
        track.reprompts = track.held = track.slides = 0
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


def check_prompts(spec: PromptSpec, size: int, episodes: dict[str, dict[int, int]], flag: str = "--on") -> None:
    """Prompts that cannot be right, refused before any model runs: points outside the frame, boxes inverted,
    empty or outside it, and prompts for splits, episodes or frames the dataset does not have. ``episodes``:
    split -> {episode: frames}. Coordinates are the dataset's pixels; numbers beyond the frame usually come from
    the full-size source video, and the message says so."""
    hint = f"coordinates are the dataset's pixels, 0 to {size} across its {size}x{size} frames (not the source video's: scale those by {size}/its width)"

    def check(prompt: Prompt, where: str) -> None:
        for (x, y), label in zip(prompt.points, prompt.labels):
            if not (0 <= x < size and 0 <= y < size):
                raise UsageError(f"{where}: the point {'neg:' if label == 0 else ''}{x:g},{y:g} is outside the frame; {hint}")
        if prompt.box is not None:
            x0, y0, x1, y1 = prompt.box
            if x1 <= x0 or y1 <= y0:
                raise UsageError(f"{where}: the box {x0:g},{y0:g},{x1:g},{y1:g} is inverted or empty: give x0,y0,x1,y1 with x0 < x1 and y0 < y1")
            if min(x0, y0) < 0 or max(x1, y1) > size:
                raise UsageError(f"{where}: the box {x0:g},{y0:g},{x1:g},{y1:g} is outside the frame; {hint}")

    if spec.source is not None:
        where = f"--prompts {spec.source}"
    else:
        where = "--point/--box"
    for episode, prompt in spec.per_episode:
        if not any(episode in by_split for by_split in episodes.values()):
            raise UsageError(f"{where}: there is no episode {episode} (episodes are numbered from 0 within each split: {describe_episodes(episodes)})")
        check(prompt, f"{where} episode {episode}")
    for prompt in (spec.default, Prompt(spec.points, spec.labels, spec.box)):
        if prompt is not None:
            check(prompt, where)
    for mark in spec.marks:
        at = f"{where if spec.source else flag} {mark.key}"
        if mark.split not in episodes:
            raise UsageError(f"{at}: the dataset has no split {mark.split!r} (it has {', '.join(episodes)})")
        if mark.episode not in episodes[mark.split]:
            raise UsageError(f"{at}: split {mark.split!r} has no episode {mark.episode} ({describe_episodes({mark.split: episodes[mark.split]})})")
        if mark.frame >= episodes[mark.split][mark.episode]:
            raise UsageError(
                f"{at}: episode {mark.episode} of {mark.split!r} has {episodes[mark.split][mark.episode]} frames (0 to {episodes[mark.split][mark.episode] - 1})"
            )
        check(mark.prompt, at)


def describe_episodes(episodes: dict[str, dict[int, int]]) -> str:
    return "; ".join(f"{split} 0 to {max(by_split)}" if by_split else f"{split} none" for split, by_split in episodes.items())
