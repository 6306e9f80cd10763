"""`masklam view`: a picture (PNG grid) or animation (GIF) of frames with their agent mask overlaid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from masklam.atomic import atomic_write_bytes
from masklam.data.dataset import Dataset
from masklam.errors import UsageError, did_you_mean

MASK_COLOUR = np.array([0, 255, 255], dtype=np.float32)  # cyan: rare in photographs and in the scenes


def overlay(rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Tint the mask's pixels and draw their outline, so both the frame and the mask stay readable."""
    out = rgb.astype(np.float32)
    inside = mask.astype(bool)
    out[inside] = (1 - alpha) * out[inside] + alpha * MASK_COLOUR
    padded = np.pad(inside, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    out[inside & ~interior] = MASK_COLOUR
    return out.astype(np.uint8)


NONE = "none"  # --mask-source none: frames only


def default_mask_source(dataset: Dataset) -> str:
    """The oracle where there is one, else the only source, else none (an ingested video before `segment`)."""
    sources = list(dataset.info.get("mask_sources", {}))
    return "oracle" if "oracle" in sources else sources[0] if len(sources) == 1 else NONE


def _episodes(dataset: Dataset, split: str, count: int, mask_source: str):
    metas = [r for r in dataset.index(split) if r.chunk == 0][:count]
    if not metas:
        raise UsageError(f"split '{split}' of {dataset.root} has no episodes: choose --split train or test")
    if mask_source != NONE and mask_source not in dataset.info["mask_sources"]:
        choices = ", ".join([*dataset.info["mask_sources"], NONE])
        raise UsageError(
            f"mask source '{mask_source}' is not in {dataset.root}{did_you_mean(mask_source, dataset.info.get('mask_sources', {}))}: choose one of {choices}"
        )
    return [dataset.episode(split, m.episode, mask_sources=() if mask_source == NONE else (mask_source,)) for m in metas]


def _upscale(image: np.ndarray, scale: int) -> Image.Image:
    return Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)


def _pair(rgb: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The frame above the same frame with its mask overlaid (the frame alone without a mask)."""
    return rgb if mask is None else np.concatenate([rgb, overlay(rgb, mask)], axis=0)


def _mask(record, mask_source: str) -> np.ndarray | None:
    return None if mask_source == NONE else record.masks[mask_source]


def view(dataset: Dataset, out: Path, split: str = "train", episodes: int = 3, frames: int = 6, mask_source: str | None = None, cell: int = 128) -> Path:
    """PNG: one row per episode, ``frames`` frames spread over it, each as frame above mask overlay.
    GIF: every frame of the episodes side by side. ``mask_source`` None: see default_mask_source."""
    mask_source = default_mask_source(dataset) if mask_source is None else mask_source
    import io

    out = Path(out)
    if out.suffix.lower() not in (".png", ".gif"):
        raise UsageError(f"--out {out} must end in .png (a grid) or .gif (an animation)")
    if frames < 1 or episodes < 1:
        raise UsageError("--frames and --episodes must be at least 1")
    records = _episodes(dataset, split, episodes, mask_source)
    scale = max(1, cell // records[0].steps["rgb"].shape[1])
    buffer = io.BytesIO()
    if out.suffix.lower() == ".png":
        rows = []
        for record in records:
            rgb, mask = record.steps["rgb"], _mask(record, mask_source)
            picks = np.linspace(0, len(rgb) - 1, frames).round().astype(int)
            rows.append(np.concatenate([_pair(rgb[t], None if mask is None else mask[t]) for t in picks], axis=1))
        _upscale(np.concatenate(rows, axis=0), scale).save(buffer, format="PNG")
    else:
        length = min(len(r.steps["rgb"]) for r in records)
        masks = [_mask(r, mask_source) for r in records]
        pictures = [
            _upscale(np.concatenate([_pair(r.steps["rgb"][t], None if m is None else m[t]) for r, m in zip(records, masks)], axis=1), scale)
            for t in range(length)
        ]
        frame_ms = max(20, round(1000 / dataset.info.get("fps", 25)))
        pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def view_frame(dataset: Dataset, out: Path, split: str, episode: int, frame: int, prompt=None, scale: int = 8, grid: int = 8) -> Path:
    """One frame, scaled up, with a labelled pixel grid every ``grid`` pixels (to read a prompt's coordinates off
    it) and, if given, a prompt drawn on it (points green, negative points red, the box yellow) to check a
    click before `masklam segment --on` uses it."""
    import io

    from PIL import ImageDraw

    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UsageError(f"--out {out}: a single frame is drawn as a .png")
    record = dataset.episode(split, episode, mask_sources=())
    if not 0 <= frame < len(record.steps["rgb"]):
        raise UsageError(f"episode {episode} of {split!r} has {len(record.steps['rgb'])} frames (0 to {len(record.steps['rgb']) - 1})")
    rgb = record.steps["rgb"][frame]
    size = rgb.shape[1]
    margin = 28  # room for the coordinates
    picture = Image.new("RGB", (size * scale + 2 * margin, rgb.shape[0] * scale + 2 * margin), "white")
    picture.paste(_upscale(rgb, scale), (margin, margin))
    draw = ImageDraw.Draw(picture)
    for at in range(0, size + 1, grid):
        x, y = margin + at * scale, margin + at * scale
        draw.line([(x, margin), (x, margin + rgb.shape[0] * scale)], fill=(255, 255, 255), width=1)
        draw.line([(margin, y), (margin + size * scale, y)], fill=(255, 255, 255), width=1)
        draw.text((x - 4, 4), str(at), fill=(0, 0, 0))
        draw.text((2, y - 5), str(at), fill=(0, 0, 0))
    if prompt is not None:
        if prompt.box is not None:
            x0, y0, x1, y1 = (margin + v * scale for v in prompt.box)
            draw.rectangle([x0, y0, x1, y1], outline=(255, 220, 0), width=2)
        for (px, py), label in zip(prompt.points, prompt.labels):
            cx, cy = margin + (px + 0.5) * scale, margin + (py + 0.5) * scale
            draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=(0, 200, 0) if label else (220, 0, 0), outline=(0, 0, 0))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    atomic_write_bytes(out, buffer.getvalue())
    return out
