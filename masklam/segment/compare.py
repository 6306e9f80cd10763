"""`masklam masks compare`: how well one mask source matches another (usually the simulator's oracle).

Per episode and overall: IoU = |ref ∩ pred| / |ref ∪ pred|, precision = |ref ∩ pred| / |pred|,
recall = |ref ∩ pred| / |ref|, all counted over every pixel of every frame (a frame where both are empty
adds nothing). Also the frames with the lowest per-frame IoU, drawn as a picture.
"""

from __future__ import annotations

import heapq
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from masklam.atomic import atomic_write_bytes, atomic_write_json
from masklam.data.dataset import open_dataset
from masklam.data.view import overlay
from masklam.errors import UsageError, did_you_mean


def ratio(numerator: int, denominator: int) -> float:
    return float(numerator / denominator) if denominator else 1.0  # nothing to get wrong counts as right


def scores(counts: np.ndarray) -> dict[str, float]:
    """counts = (intersection, union, pred pixels, ref pixels)."""
    inter, union, pred, ref = (int(c) for c in counts)
    return {"iou": ratio(inter, union), "precision": ratio(inter, pred), "recall": ratio(inter, ref)}


def compare_sources(
    data: str | Path, ref: str, pred: str, splits: tuple[str, ...] = ("train", "test"), worst: int = 8, out: Path | None = None
) -> dict[str, Any]:
    dataset = open_dataset(data)
    sources = dataset.info.get("mask_sources", {})
    for source in (ref, pred):
        if source not in sources:
            raise UsageError(f"{dataset.root} has no '{source}' masks{did_you_mean(source, sources)}: choose from {', '.join(sorted(sources))}")
    episodes: list[dict[str, Any]] = []
    per_split: dict[str, np.ndarray] = {}  # (intersection, union, predicted, reference) pixel counts
    # The worst frames so far: a heap on -IoU, whose top is the best of them (the one to drop first).
    kept: list[tuple[float, int, tuple]] = []
    seen = 0
    for split in splits:
        if split not in dataset.info["splits"]:
            continue
        per_episode: dict[int, np.ndarray] = {}
        for record in dataset.records(split, mask_sources=(ref, pred), fields=("rgb",)):
            a, b = record.masks[ref].astype(bool), record.masks[pred].astype(bool)
            inter, union = (a & b).sum((1, 2)), (a | b).sum((1, 2))
            counts = np.array([inter.sum(), union.sum(), b.sum(), a.sum()], np.int64)
            per_episode[record.meta.episode] = per_episode.get(record.meta.episode, 0) + counts
            for t in np.flatnonzero(union):
                seen += 1
                item = (-float(inter[t] / union[t]), seen, (split, record.meta.episode, record.meta.start + int(t), record.steps["rgb"][t], a[t], b[t]))
                if len(kept) < worst:
                    heapq.heappush(kept, item)
                elif item[0] > kept[0][0]:
                    heapq.heapreplace(kept, item)
        episodes += [{"split": split, "episode": episode, **scores(counts)} for episode, counts in sorted(per_episode.items())]
        if per_episode:
            per_split[split] = sum(per_episode.values())
    if not episodes:
        raise UsageError(f"no episodes in splits {list(splits)} of {dataset.root}")
    worst_frames = sorted(kept, reverse=True)  # lowest IoU first
    result = {
        "ref": ref,
        "pred": pred,
        "overall": scores(sum(per_split.values())),
        "splits": {split: scores(counts) for split, counts in per_split.items()},  # test: held-out seeds and videos
        "episodes": episodes,
        "worst_frames": [{"split": s, "episode": e, "frame": f, "iou": round(-negative_iou, 4)} for negative_iou, _, (s, e, f, *_rest) in worst_frames],
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / f"compare-{pred}-vs-{ref}.json", result)
        if worst_frames:
            picture = worst_frames_picture([item[2] for item in worst_frames])
            atomic_write_bytes(out / f"compare-{pred}-vs-{ref}-worst.png", picture)
            result["picture"] = str(out / f"compare-{pred}-vs-{ref}-worst.png")
    return result


def worst_frames_picture(frames: list[tuple], scale: int = 2) -> bytes:
    """One column per frame: the frame, the reference mask overlaid, the predicted mask overlaid."""
    columns = [np.concatenate([rgb, overlay(rgb, ref), overlay(rgb, pred)], axis=0) for *_, rgb, ref, pred in frames]
    grid = np.concatenate(columns, axis=1)
    image = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def render_comparison(result: dict[str, Any]) -> str:
    lines = [f"{result['pred']} against {result['ref']}", "", "| split | episode | IoU | precision | recall |", "|---|---|---|---|---|"]
    lines += [f"| {e['split']} | {e['episode']} | {e['iou']:.3f} | {e['precision']:.3f} | {e['recall']:.3f} |" for e in result["episodes"]]
    for split, o in result.get("splits", {}).items():
        lines.append(f"| {split} | all | {o['iou']:.3f} | {o['precision']:.3f} | {o['recall']:.3f} |")
    o = result["overall"]
    lines.append(f"| all | | {o['iou']:.3f} | {o['precision']:.3f} | {o['recall']:.3f} |")
    if "picture" in result:
        lines += ["", f"worst frames: {result['picture']}"]
    return "\n".join(lines)
