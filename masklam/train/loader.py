"""Training windows streamed from a sharded masklam dataset (local, file:// or an fsspec URL such as s3://).

A *window* is one transition o_t -> o_{t+1} of a record, with the frame stacks a latent action model sees:

    "obs"       uint8 (stack, H, W, 3)   frames t-stack+1 .. t
    "future"    uint8 (stack, H, W, 3)   frames t+k-stack+1 .. t+k, k ~ U{1..K} clipped to the record's end
    "next"      uint8 (H, W, 3)          frame t+1
    "obs_mask", "future_mask" uint8 (stack, H, W), "next_mask" uint8 (H, W)   masks of the same frames
    "action"    float32 (A,)             a_t; zeros when the record is unlabelled, or in-pool (below)
    "labelled"  bool, "k" int64, and each extra field at t
    "episode"   int64                    the record's episode index within its split (WindowSpec(episode=True))

Every transition of every record is one window per epoch: t = 0 .. frames-2. Frames before the record's first
are its first frame repeated. A record is a whole episode unless the dataset was collected with --chunk-steps:
then a later chunk's first stacks repeat the chunk's first frame instead of showing the frames before it.

Splitting across processes. The split's shards are shuffled by (seed, epoch), dealt out by rank
(``rank`` / ``world_size`` arguments, else torchrun's RANK / WORLD_SIZE), then by DataLoader worker: each shard
is read by exactly one (rank, worker) per epoch. With fewer shards than ranks x workers every process reads
every shard and keeps every (ranks x workers)-th record instead, so that nobody idles (the extra reads are
of a dataset that small); make_loader starts no more workers than there are records for them. Processes may get different numbers of windows: train by steps with ``epochs=None``.

Shuffling and memory. Each record's windows come in random order, through a shuffle buffer that mixes records.
A window is cut from its record (copied) only when it enters the buffer, so a process holds at most
``shuffle_buffer + 1`` windows, the record being cut and the reader's state for one shard (one record at a time
for both backends), never the dataset. A 64 px window with stack 3 and masks is 112 KiB: the default buffer
holds about 224 MiB per worker.

Labels held out. The probe's in-pool score is taken on train episodes whose actions no stage learnt from
(``Dataset.in_pool_episodes``: a fifth of the labelled train episodes). By default (``WindowSpec.labels =
"training"``) their windows come unlabelled, exactly like an unlabelled record's, so a stage that learns from
actions (LAOM-Labels' action head, the latent-to-action decoder, BC on true actions) cannot read them; only the
probe asks for ``labels="all"``.

Remote datasets are read through fsspec, which takes its options from the environment: for S3 the AWS
variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...) or fsspec's own
FSSPEC_S3_<OPTION> (e.g. FSSPEC_S3_ENDPOINT_URL), read when fsspec is imported. s3:// needs s3fs installed.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from masklam.data.dataset import Dataset, open_dataset
from masklam.data.schema import ORACLE, Record
from masklam.errors import UsageError, did_you_mean
from masklam.ranks import rank_and_world_size

Window = dict[str, Any]
T = TypeVar("T")
LABEL_POLICY = 2  # 1: training read every labelled train episode; 2: in-pool episodes held out (in run settings)
LABELS = ("training", "all")
WINDOW_KEYS = frozenset({"obs", "future", "next", "obs_mask", "future_mask", "next_mask", "action", "labelled", "k", "episode", "step"})


@dataclass(frozen=True)
class WindowSpec:
    """What a window holds."""

    stack: int = 3  # frames per stack: o_{t-stack+1..t}
    future_max: int = 1  # K: the future stack ends at t+k, k ~ U{1..K}, clipped to the record's last frame
    mask_source: str | None = ORACLE  # masks to return (None: no masks)
    labelled_only: bool = False  # only windows of labelled records (those whose a_t is stored)
    fields: tuple[str, ...] = ()  # extra per-step arrays to return at t (e.g. "state", "distractor_bg_frame")
    next_fields: tuple[str, ...] = ()  # ... and at t+1, as "next_<name>" (the probe's camera motion)
    episode: bool = False  # also return the episode index (probes cross-validate grouped by episode)
    step: bool = False  # also return t within the episode (with episode: a key for the window; latent BC caches by it)
    labels: str = "training"  # "training": in-pool train episodes come unlabelled; "all": the probe's, every label

    def __post_init__(self) -> None:
        if self.labels not in LABELS:
            raise UsageError(f"labels={self.labels!r}: choose one of {', '.join(LABELS)}")
        if self.stack < 1 or self.future_max < 1:
            raise UsageError(f"stack ({self.stack}) and future_max ({self.future_max}) must be at least 1")
        clashing = sorted(WINDOW_KEYS.intersection((*self.fields, *(f"next_{name}" for name in self.next_fields))))
        if clashing:
            raise UsageError(f"fields {clashing} are part of every window already: leave them out of fields")


def record_windows(record: Record, spec: WindowSpec, action_shape: tuple[int, ...], rng: np.random.Generator) -> Iterator[Window]:
    """The record's windows, one per transition, in random order; each is cut from the record when asked for."""
    frames = record.meta.frames
    order = rng.permutation(frames - 1)
    ks = np.minimum(rng.integers(1, spec.future_max + 1, size=len(order)), frames - 1 - order)
    stack_offsets = np.arange(1 - spec.stack, 1)
    rgb = record.steps["rgb"]
    mask = None if spec.mask_source is None else record.masks[spec.mask_source]
    action = record.steps.get("action")  # None for an unlabelled record
    for t, k in zip(order.tolist(), ks.tolist()):
        obs = np.maximum(t + stack_offsets, 0)  # before the record's start: its first frame again
        future = np.maximum(t + k + stack_offsets, 0)
        # Fancy indexing and np.array copy: a window in the buffer must not keep its whole record alive.
        window: Window = {"obs": rgb[obs], "future": rgb[future], "next": np.array(rgb[t + 1])}
        if mask is not None:
            window |= {"obs_mask": mask[obs], "future_mask": mask[future], "next_mask": np.array(mask[t + 1])}
        window["action"] = np.zeros(action_shape, np.float32) if action is None else np.array(action[t])
        window |= {"labelled": action is not None, "k": np.int64(k)}
        window |= {name: np.array(record.steps[name][t]) for name in spec.fields}
        window |= {f"next_{name}": np.array(record.steps[name][t + 1]) for name in spec.next_fields}
        if spec.episode:
            window["episode"] = np.int64(record.meta.episode)
        if spec.step:
            window["step"] = np.int64(record.meta.start + t)
        yield window


def shuffled(items: Iterable[T], size: int, rng: np.random.Generator) -> Iterator[T]:
    """Items in random order through a buffer of ``size`` items: at most ``size + 1`` are held at once."""
    buffer: list[T] = []
    for item in items:
        buffer.append(item)
        if len(buffer) > size:
            i = int(rng.integers(len(buffer)))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


class WindowDataset(IterableDataset):
    """Windows of one split, streamed shard by shard; see the module docstring for splitting and shuffling.

    ``epochs=None`` streams forever. The epoch counter lives in the process that iterates (a DataLoader worker
    with persistent workers, as make_loader makes them): iterating again goes on with the next epoch.
    Deterministic given (seed, rank, world_size, number of workers).
    """

    def __init__(
        self,
        source: str | Path,
        split: str,
        spec: WindowSpec,
        seed: int = 0,
        shuffle_buffer: int = 2048,
        epochs: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        self.source, self.split, self.spec, self.seed = str(source), split, spec, seed
        self.shuffle_buffer, self.epochs = shuffle_buffer, epochs
        self.rank, self.world_size = rank_and_world_size(rank, world_size)
        dataset = open_dataset(self.source)  # fail here, in the main process, on a bad source or spec
        sources = dataset.info.get("mask_sources", {})
        if spec.mask_source is not None and spec.mask_source not in sources:
            hint = did_you_mean(spec.mask_source, sources)
            raise UsageError(
                f"{dataset.root} has no '{spec.mask_source}' masks{hint} (it has {sorted(sources) or 'none'}): "
                + ("choose a stored mask source" if sources else "make masks with `masklam segment` first")
            )
        dataset.check_fields((*spec.fields, *spec.next_fields))
        self.shards = dataset.shards(split)
        # Episodes whose labels this stream hides: the probe's in-pool episodes, unless it is the probe's stream.
        self.held = dataset.in_pool_episodes() if split == "train" and spec.labels == "training" else frozenset()
        if spec.labelled_only:  # the shard index says which shards hold labelled records: read only those
            self.shards = [s for s in self.shards if any(self.labelled(meta) for meta in dataset.shard_index(split, s))]
            if not self.shards:
                raise UsageError(f"split {split!r} of {dataset.root} has no labelled records: drop labelled_only")
        self.decoded_fields = ("rgb", "action", *dict.fromkeys((*spec.fields, *spec.next_fields)))
        self.action_shape = tuple(dataset.info["features"]["action"]["shape"])
        self._next_epoch = 0

    def __iter__(self) -> Iterator[Window]:
        dataset = open_dataset(self.source)  # opened in the iterating process: no fsspec state crosses a fork
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        first = self._next_epoch
        for epoch in itertools.count(first) if self.epochs is None else range(first, first + self.epochs):
            self._next_epoch = epoch + 1
            count = 0
            for count, window in enumerate(self._epoch_windows(dataset, epoch, worker_id, workers), 1):  # noqa: B007 (read after the loop)
                yield window
            if count == 0 and self.epochs is None:  # streaming forever would spin without yielding
                raise UsageError(f"rank {self.rank} worker {worker_id} got no windows of split {self.split!r} of {self.source}: use fewer ranks or workers")

    def _epoch_windows(self, dataset: Dataset, epoch: int, worker_id: int, workers: int) -> Iterator[Window]:
        shard_order = np.random.default_rng([self.seed, epoch]).permutation(self.shards).tolist()  # alike everywhere
        rng = np.random.default_rng([self.seed, epoch, self.rank, self.world_size, worker_id, workers])
        sources = () if self.spec.mask_source is None else (self.spec.mask_source,)
        if len(self.shards) >= self.world_size * workers:
            mine = self._deal(shard_order, worker_id, workers)
            records: Iterable[Record] = self._kept(dataset.records(self.split, sources, self.decoded_fields, shards=mine))
        else:  # dealt after the labelled-only filter: dealt before it, a process could get unlabelled records only
            every_record = dataset.records(self.split, sources, self.decoded_fields, shards=shard_order)
            records = self._deal(self._kept(every_record), worker_id, workers)
        windows = (window for record in records for window in record_windows(record, self.spec, self.action_shape, rng))
        return shuffled(windows, self.shuffle_buffer, rng)

    def _kept(self, records: Iterable[Record]) -> Iterator[Record]:
        """The records this stream reads, the held-out episodes' labels hidden."""
        return (self.hide_held_labels(record) for record in records if self.reads(record.meta))

    def records(self) -> int:
        """Records this stream reads (every rank's)."""
        return sum(map(self.reads, open_dataset(self.source).index(self.split)))

    def reads(self, meta) -> bool:
        """Whether this stream reads the record: every one, or for ``labelled_only`` the labelled ones."""
        return self.labelled(meta) or not self.spec.labelled_only

    def labelled(self, meta) -> bool:
        return meta.labelled and meta.episode not in self.held

    def hide_held_labels(self, record: Record) -> Record:
        """An in-pool episode's record as if it were unlabelled (its actions gone), when this stream hides them."""
        if record.meta.episode not in self.held:
            return record
        steps = {name: array for name, array in record.steps.items() if name != "action"}
        return Record(dataclasses.replace(record.meta, labelled=False), steps, record.masks)

    def _deal(self, items: Iterable[T], worker_id: int, workers: int) -> Iterator[T]:
        """Every (world_size)-th item to this rank, then every (workers)-th of those to this worker."""
        return itertools.islice(items, self.rank + self.world_size * worker_id, None, self.world_size * workers)


def make_loader(dataset: WindowDataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Batches of windows as torch tensors with a leading batch dimension (uint8 frames stay uint8). Never more
    loader processes than this rank has records to deal out (a few labelled episodes, say): a worker with none
    would stall a stream that runs forever."""
    if num_workers > 0:
        num_workers = min(num_workers, dataset.records() // dataset.world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,  # workers keep their epoch counter (and open files) between passes
        pin_memory=torch.cuda.is_available(),
        # torch's workers notice a dead parent only between batches; this ends them with it at once
        worker_init_fn=functools.partial(_die_with, os.getpid()) if num_workers > 0 else None,
    )


def _die_with(parent_pid: int, worker_id: int) -> None:
    from masklam.processes import die_with_parent

    die_with_parent(parent_pid)


def action_variance(source: str | Path, split: str = "train") -> np.ndarray:
    """Per-dimension variance of a split's true actions (Var(a) of the probe metric is its mean).

    From info.json's action_stats when they cover ``split`` (collect records them over every train transition,
    labelled or not); else computed from the split's labelled transitions.
    """
    dataset = open_dataset(source)
    stats = dataset.info.get("action_stats")
    if stats is not None and stats.get("split") == split:
        return np.asarray(stats["var"], np.float64)
    actions = [
        record.steps["action"][:-1].astype(np.float64)  # the last frame's action belongs to the next record or none
        for record in dataset.records(split, mask_sources=(), fields=("action",))
        if record.meta.labelled
    ]
    if not actions:
        raise UsageError(f"split {split!r} of {dataset.root} has no labelled actions to take the variance of")
    return np.concatenate(actions).var(axis=0)
