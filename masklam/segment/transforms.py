"""Degraded masks for robustness studies, as derived sources: erode or dilate by r px, drop a fraction of
frames (their masks become empty), occlude a fraction of the agent's box in every frame.

Every draw comes from a generator seeded by (seed, the record's episode and chunk), so a derived source is
reproducible and does not depend on how shards are dealt out to ranks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from masklam.data.schema import Record
from masklam.errors import UsageError


@dataclass(frozen=True)
class MaskTransform:
    erode: int = 0  # px
    dilate: int = 0  # px
    drop: float = 0.0  # fraction of frames whose mask is emptied
    occlude: float = 0.0  # fraction of the agent's bounding box blanked in every frame
    seed: int = 0

    def __post_init__(self) -> None:
        if self.erode < 0 or self.dilate < 0:
            raise UsageError("--erode and --dilate take a radius in pixels, 0 or more")
        if self.erode and self.dilate:
            raise UsageError("--erode and --dilate both given: derive one source per transform")
        if not (0 <= self.drop <= 1 and 0 <= self.occlude <= 1):
            raise UsageError("--drop and --occlude take a fraction between 0 and 1")
        if not (self.erode or self.dilate or self.drop or self.occlude):
            raise UsageError("no transform given: pass --erode R, --dilate R, --drop F or --occlude F")

    def default_name(self, source: str) -> str:
        """e.g. oracle_erode2, oracle_drop50, oracle_occlude25."""
        settings = (
            ("erode", self.erode, self.erode),
            ("dilate", self.dilate, self.dilate),
            ("drop", round(100 * self.drop), self.drop),
            ("occlude", round(100 * self.occlude), self.occlude),
        )
        return "_".join([source, *(f"{label}{shown}" for label, shown, value in settings if value)])

    def describe(self, source: str) -> dict:
        return {"kind": "transform", "from": source, **asdict(self)}

    def apply(self, masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(frames, H, W) 0/1 masks -> transformed copy."""
        out = masks.astype(bool)
        if self.erode or self.dilate:
            from scipy.ndimage import binary_dilation, binary_erosion  # here: recipes and reports read this class
            from skimage.morphology import disk

            operation, radius = (binary_erosion, self.erode) if self.erode else (binary_dilation, self.dilate)
            footprint = disk(radius)
            out = np.stack([operation(frame, structure=footprint) for frame in out])
        if self.occlude:
            # One placement per record, relative to the agent's box: the occluder moves with the agent, the
            # same across a training clip (as in MaskLAM's ablation), not flickering from frame to frame.
            where = (float(rng.random()), float(rng.random()))
            out = np.stack([occlude(frame, self.occlude, where) for frame in out])
        if self.drop:
            dropped = rng.random(len(out)) < self.drop
            out[dropped] = False
        return out.astype(np.uint8)

    def __call__(self, source: str):
        """The mask function for the writer: transform each record's ``source`` masks."""

        def transformed(records: Iterator[Record]) -> Iterator[np.ndarray]:
            for record in records:
                rng = np.random.default_rng([self.seed, record.meta.episode, record.meta.chunk, record.meta.split == "test"])
                yield self.apply(record.masks[source], rng)

        return transformed


def occlude(mask: np.ndarray, fraction: float, where: tuple[float, float]) -> np.ndarray:
    """Blank a rectangle covering ``fraction`` of the mask's bounding box (same aspect ratio), placed at
    ``where`` = (top, left) as fractions of the room the box leaves it."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return mask
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = np.sqrt(fraction)
    h, w = max(1, round((y1 - y0) * side)), max(1, round((x1 - x0) * side))
    top = y0 + int(where[0] * (y1 - y0 - h + 1))
    left = x0 + int(where[1] * (x1 - x0 - w + 1))
    out = mask.copy()
    out[top : top + h, left : left + w] = False
    return out


def derive_source(
    data, source: str, transform: MaskTransform, name: str | None = None, overwrite: bool = False, show_progress: bool = True
) -> tuple[str, dict]:
    """Write ``transform`` of mask source ``source`` as a new source of the dataset: (its name, the writer's summary)."""
    from masklam.segment.writer import write_mask_source

    target = name or transform.default_name(source)
    return target, write_mask_source(data, target, transform.describe(source), transform(source), (source,), overwrite=overwrite, show_progress=show_progress)
