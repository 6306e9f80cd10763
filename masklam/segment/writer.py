"""Add a named mask source to a dataset, shard by shard: shard-parallel, resumable, atomic.

Frames are never rewritten: each shard's masks go beside them through the storage backend's
``write_masks`` (a new tar in masks/<source>/ for WebDataset, a new array under data/mask/<source> for
Zarr), each written atomically. A shard is done once its marker ``segment/<source>/<split>/shard-N.json``
exists (written after its masks): a re-run skips done shards, so a killed job resumes where it stopped.

Shards of both splits are dealt out by rank (``rank`` / ``world_size``, else torchrun's RANK / WORLD_SIZE):
every shard is processed by exactly one rank. Whichever rank finds every shard done registers the source
in info.json (the same bytes whoever writes them), and the source becomes visible to readers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from masklam.atomic import atomic_write_json, remove_stale_temp_files
from masklam.data.dataset import INFO, Dataset, open_dataset
from masklam.data.schema import MASK_SOURCE_RE, ORACLE, Record
from masklam.data.storage import DATASET_FILES, ZARR_ARRAY_FILES, remove_owned
from masklam.errors import UsageError
from masklam.locks import writer_lock
from masklam.ranks import rank_and_world_size

SEGMENT_DIR = "segment"

# Records of one shard, in order -> one (frames, H, W) uint8 0/1 mask per record, in the same order.
MaskFunction = Callable[[Iterator[Record]], Iterator[np.ndarray]]


def check_source_name(dataset: Dataset, name: str) -> None:
    if not MASK_SOURCE_RE.match(name):
        raise UsageError(f"mask source name {name!r} must be lower-case letters, digits and '_' (e.g. sam_vit_h)")
    if name == ORACLE:
        raise UsageError("'oracle' names the simulator's masks, which are never replaced: pick another --name")
    if not isinstance(dataset.root, Path):
        raise UsageError(f"{dataset.root} is not a local folder: masks are written into the dataset, so pass a local copy")


def claim_source_without_settings(dataset: Dataset, name: str, overwrite: bool) -> None:
    """claim_source's refusal that needs no settings, for a check before any model runs."""
    saved = Path(dataset.root) / SEGMENT_DIR / name / "config.json"
    if name in dataset.info.get("mask_sources", {}) and not saved.exists() and not overwrite:
        raise UsageError(f"{dataset.root} already has '{name}' masks: pick another --name, or pass --overwrite to replace them")


def claim_source(root: Path, name: str, description: dict[str, Any], registered: bool, overwrite: bool) -> None:
    """Record what makes this source; the same settings resume (a finished source is left as it is), other
    settings are refused unless ``overwrite``."""
    folder = root / SEGMENT_DIR / name
    saved = folder / "config.json"
    if registered and not saved.exists() and not overwrite:
        raise UsageError(f"{root} already has '{name}' masks: pick another --name, or pass --overwrite to replace them")
    if saved.exists():
        if json.loads(saved.read_text()) == json.loads(json.dumps(description)):  # as JSON: tuples are lists
            return
        if not overwrite:
            raise UsageError(
                f"'{name}' masks of {root} are being made with other settings ({saved}): use the same settings to resume, another --name, or --overwrite"
            )
        for marker in folder.glob("*/shard-*.json"):
            marker.unlink()  # start over: the old settings' shards are not done for the new ones
    atomic_write_json(saved, description)


def source_lock(root: Path, name: str, rank: int):
    """The writer lock of mask source ``name`` of the dataset at ``root``, for one rank."""
    return writer_lock(root, f"masks-{name}-rank{rank}")


def write_mask_source(
    data: str | Path,
    name: str,
    description: dict[str, Any],
    make_masks: MaskFunction,
    reads: tuple[str, ...] = (),
    rank: int | None = None,
    world_size: int | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    locked: bool = False,
) -> dict[str, Any]:
    """Write source ``name`` for this rank's shards with ``make_masks`` (given records with the ``reads`` mask
    sources); register it in info.json once every shard is done. Returns a summary. ``locked``: the caller holds
    the source's writer lock (source_lock) already, from before its own expensive work."""
    dataset = open_dataset(data)
    check_source_name(dataset, name)
    missing = [source for source in reads if source not in dataset.info.get("mask_sources", {})]
    if missing:
        raise UsageError(f"{dataset.root} has no {missing} masks, which this needs: choose an existing source")
    root: Path = dataset.root
    rank, world_size = rank_and_world_size(rank, world_size)
    registered = name in dataset.info.get("mask_sources", {})
    fresh = not registered and not (root / SEGMENT_DIR / name).exists()  # nothing of this source on disk yet
    with nullcontext() if locked else source_lock(root, name, rank):  # one writer per mask source (and rank)
        claim_source(root, name, description, registered, overwrite)
        remove_stale_temp_files(root, same_host=world_size == 1)  # an interrupted run's (ranks elsewhere: by age)

        every = [(split, shard) for split in dataset.info["splits"] for shard in dataset.shards(split)]
        mine = every[rank::world_size]
        todo = [(split, shard) for split, shard in mine if not marker_path(root, name, split, shard).exists()]
        try:
            write_shards(dataset, name, make_masks, reads, todo, show_progress)
        except UsageError:
            # Damaged input: a re-run needs the input mended first, so this run's partial source is no resume point.
            # Kills and Ctrl-C keep theirs (they resume); other ranks may still be writing theirs.
            if fresh and world_size == 1:
                remove_partial_source(dataset, name, every)
            raise
        registered = register_if_complete(root, name, description, every)
        return {"source": name, "shards": len(mine), "written": len(todo), "registered": registered}


def write_shards(dataset: Dataset, name: str, make_masks: MaskFunction, reads: tuple[str, ...], todo: list[tuple[str, int]], show_progress: bool) -> None:
    root: Path = dataset.root
    indexes = {(split, shard): dataset.shard_index(split, shard) for split, shard in todo}
    bar = tqdm(total=sum(meta.frames for metas in indexes.values() for meta in metas), unit="frame", desc=f"segment {name}", disable=not show_progress or None)
    for (split, shard), metas in indexes.items():
        began = time.perf_counter()
        records = dataset.records(split, mask_sources=reads, fields=("rgb",), shards=[shard])
        masks = {}
        for meta, mask in zip(metas, make_masks(records)):
            masks[meta.key] = check_mask(mask, meta.frames, dataset.info["env"]["render"]["size"], name)
            bar.update(meta.frames)  # frames whose masks are made, not read: a buffering mask function shows its real pace
        if len(masks) != len(metas):
            raise RuntimeError(f"the '{name}' mask function gave {len(masks)} masks for {len(metas)} records")
        dataset.backend.write_masks(root, split, shard, name, masks)
        pixels = int(sum(int(m.sum(dtype=np.int64)) for m in masks.values()))
        atomic_write_json(
            marker_path(root, name, split, shard), {"frames": sum(meta.frames for meta in metas), "mask_pixels": pixels, "seconds": time.perf_counter() - began}
        )
    bar.close()


def remove_partial_source(dataset: Dataset, name: str, every: list[tuple[str, int]]) -> None:
    """Remove what this run wrote of source ``name`` (its masks beside each shard, its markers), nothing else: a
    user's file in any of these folders stays, with the folders holding it."""
    for split, shard in every:
        location = dataset.backend.mask_location(dataset.root, split, shard, name)
        if location.is_dir() and not location.is_symlink():  # a Zarr array folder
            remove_owned(location, ZARR_ARRAY_FILES)
            if not any(location.iterdir()):
                location.rmdir()
        elif location.is_file() and not location.is_symlink():  # a WebDataset tar: masklam's by its name
            location.unlink()
        for folder in (location.parent, location.parent.parent):  # masks/<name>/<split>, masks/<name> when empty
            if folder.name in (name, split) and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    folder = dataset.root / SEGMENT_DIR / name
    if folder.is_dir():
        remove_owned(folder, DATASET_FILES, prefix=f"{SEGMENT_DIR}/{name}/")
        if not any(folder.iterdir()):
            folder.rmdir()


def check_mask(mask: np.ndarray, frames: int, size: int, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != (frames, size, size):
        raise RuntimeError(f"the '{name}' mask function gave shape {mask.shape}, expected {(frames, size, size)}")
    return (mask > 0).astype(np.uint8)


def marker_path(root: Path, name: str, split: str, shard: int) -> Path:
    return root / SEGMENT_DIR / name / split / f"shard-{shard:06d}.json"


def register_if_complete(root: Path, name: str, description: dict[str, Any], every: list[tuple[str, int]]) -> bool:
    """Add the source to info.json once every shard has its marker; coverage = the mean mask fraction."""
    markers = [marker_path(root, name, split, shard) for split, shard in every]
    if not all(path.exists() for path in markers):
        return False
    done = [json.loads(path.read_text()) for path in markers]
    info = json.loads((root / INFO).read_text())
    size = info["env"]["render"]["size"]
    coverage = sum(d["mask_pixels"] for d in done) / max(1, sum(d["frames"] for d in done) * size * size)
    entry = json.loads(json.dumps({**description, "coverage": float(np.round(coverage, 6))}))
    if info.setdefault("mask_sources", {}).get(name) != entry:
        info["mask_sources"][name] = entry
        atomic_write_json(root / INFO, info)
    return True
