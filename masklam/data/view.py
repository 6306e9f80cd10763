"""`masklam view`: a picture (PNG grid) or animation (GIF) of frames with their agent mask overlaid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from masklam.atomic import atomic_write_bytes
from masklam.data.dataset import Dataset
from masklam.errors import UsageError

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


def _episodes(dataset: Dataset, split: str, count: int, mask_source: str):
    metas = [r for r in dataset.index(split) if r.chunk == 0][:count]
    if not metas:
        raise UsageError(f"split '{split}' of {dataset.root} has no episodes: choose --split train or test")
    if mask_source not in dataset.info["mask_sources"]:
        raise UsageError(f"mask source '{mask_source}' is not in {dataset.root}: choose one of {', '.join(dataset.info['mask_sources'])}")
    return [dataset.episode(split, m.episode, mask_sources=(mask_source,)) for m in metas]


def _upscale(image: np.ndarray, scale: int) -> Image.Image:
    return Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)


def _pair(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The frame above the same frame with its mask overlaid."""
    return np.concatenate([rgb, overlay(rgb, mask)], axis=0)


def view(dataset: Dataset, out: Path, split: str = "train", episodes: int = 3, frames: int = 6, mask_source: str = "oracle", cell: int = 128) -> Path:
    """PNG: one row per episode, ``frames`` frames spread over it, each as frame above mask overlay.
    GIF: every frame of the episodes side by side."""
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
            rgb, mask = record.steps["rgb"], record.masks[mask_source]
            picks = np.linspace(0, len(rgb) - 1, frames).round().astype(int)
            rows.append(np.concatenate([_pair(rgb[t], mask[t]) for t in picks], axis=1))
        _upscale(np.concatenate(rows, axis=0), scale).save(buffer, format="PNG")
    else:
        length = min(len(r.steps["rgb"]) for r in records)
        pictures = [_upscale(np.concatenate([_pair(r.steps["rgb"][t], r.masks[mask_source][t]) for r in records], axis=1), scale) for t in range(length)]
        frame_ms = max(20, round(1000 / dataset.info.get("fps", 25)))
        pictures[0].save(buffer, format="GIF", save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0)
    atomic_write_bytes(out, buffer.getvalue())
    return out
