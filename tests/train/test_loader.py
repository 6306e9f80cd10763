"""The window loader over both backends: window contents, splitting over ranks and workers, shuffling,
bounded memory, and reading from an object store (a local moto S3 server) and file:// URLs.

Datasets are synthetic: every pixel of frame i of episode e holds (e, i) and its mask spells i in bits,
so a window says which frames it was cut from.
"""

from __future__ import annotations

import collections
import itertools
import logging
import socket
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from masklam.atomic import atomic_write_json
from masklam.data.dataset import BACKENDS, open_dataset, write_index
from masklam.data.schema import ORACLE, SCHEMA_VERSION, Feature, Record, RecordMeta, record_key
from masklam.errors import UsageError
from masklam.train.loader import WindowDataset, WindowSpec, action_variance, make_loader, shuffled

SIZE = 8  # pixels a side
MASK_BITS = 8  # the first row of frame i's mask spells i in binary
# A layout is a list of shards, each a list of episodes (index, frames, labelled).
LAYOUT = [[(0, 7, True), (1, 12, False)], [(2, 3, True), (3, 9, True)]]


def features(size: int) -> dict[str, Feature]:
    return {
        "rgb": Feature("uint8", (size, size, 3)),
        "state": Feature("float32", (2,)),
        "action": Feature("float32", (2,)),
    }


def true_action(episode: int, index: np.ndarray) -> np.ndarray:
    return np.stack([episode + index / 100, -index], axis=-1).astype(np.float32)


def episode_records(episode: int, frames: int, labelled: bool, chunk_frames: int, size: int) -> list[Record]:
    """The episode's records: chunks of ``chunk_frames`` sharing their boundary frame (one record when 0)."""
    index = np.arange(frames)
    rgb = np.zeros((frames, size, size, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = episode, index[:, None, None]
    masks = np.zeros((frames, size, size), np.uint8)
    masks[:, 0, :MASK_BITS] = (index[:, None] >> np.arange(MASK_BITS)) & 1
    steps = {"rgb": rgb, "state": np.stack([np.full(frames, episode), index], 1).astype(np.float32)}
    if labelled:
        steps["action"] = true_action(episode, index)
        steps["action"][-1] = np.nan  # the final frame has no transition
    records, start, length = [], 0, chunk_frames or frames
    while True:
        stop = min(start + length, frames)
        chunk = len(records)
        meta = RecordMeta(record_key(episode, chunk), "train", episode, chunk, start, stop - start, frames, episode, labelled, 0.0)
        records.append(Record(meta, {k: v[start:stop] for k, v in steps.items()}, {ORACLE: masks[start:stop]}))
        if stop == frames:
            return records
        start = stop - 1


def write_dataset(root: Path, backend: str, layout: list, chunk_frames: int = 0, size: int = SIZE, stats: dict | None = None) -> Path:
    """A train split written as collect writes one: shards, their index files, then info.json."""
    for shard, episodes in enumerate(layout):
        records = [r for spec in episodes for r in episode_records(*spec, chunk_frames, size)]
        BACKENDS[backend].write_shard(root, "train", shard, records, features(size))
        write_index(root, "train", shard, [r.meta for r in records], {})
    episodes = [spec for shard in layout for spec in shard]
    counts = {
        "episodes": len(episodes),
        "records": len(episodes),
        "frames": sum(frames for _, frames, _ in episodes),
        "labelled_episodes": sum(labelled for *_, labelled in episodes),
    }
    if chunk_frames:  # records are chunks sharing their boundary frame
        counts["records"] = sum(len(range(0, max(frames - 1, 1), chunk_frames - 1)) for _, frames, _ in episodes)
    info = {
        "schema_version": SCHEMA_VERSION,
        "masklam_version": "test",
        "backend": backend,
        "env": {"env_id": "synthetic", "render": {"size": size}, "distractors": {}, "episode_steps": 0},
        "fps": 10.0,
        "splits": {"train": {"shards": len(layout), **counts}},
        "features": {name: f.to_json() for name, f in features(size).items()},
        "state_names": ["episode", "frame"],
        "action_bounds": {"low": [-10.0, -100.0], "high": [100.0, 0.0]},
        "mask_sources": {ORACLE: {}},
        "collect": {},
    }
    atomic_write_json(root / "info.json", info | ({"action_stats": stats} if stats else {}))
    return root


def transitions(layout: list, labelled_only: bool = False) -> list[tuple[int, int]]:
    """(episode, t) of every transition, t counted within the episode."""
    episodes = [(e, frames) for shard in layout for e, frames, labelled in shard if labelled or not labelled_only]
    return sorted((e, t) for e, frames in episodes for t in range(frames - 1))


def window_id(window: dict) -> tuple[int, int]:
    return int(window["next"][0, 0, 0]), int(window["next"][0, 0, 1]) - 1


def mask_index(mask: np.ndarray) -> np.ndarray:
    return (mask[..., 0, :MASK_BITS].astype(int) << np.arange(MASK_BITS)).sum(-1)


def unbatch(batches: Iterator[dict[str, torch.Tensor]]) -> Iterator[dict]:
    for batch in batches:
        for i in range(len(batch["k"])):
            yield {name: value[i].numpy() for name, value in batch.items()}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.parametrize("chunk_frames", [0, 4])
def test_windows_hold_the_right_frames(tmp_path, backend, chunk_frames):
    root = write_dataset(tmp_path, backend, LAYOUT, chunk_frames)
    spec = WindowSpec(stack=3, future_max=4, fields=("state",), next_fields=("state",))
    windows = list(WindowDataset(root, "train", spec, epochs=1))

    assert sorted(map(window_id, windows)) == transitions(LAYOUT)
    frames = {e: n for shard in LAYOUT for e, n, _ in shard}
    in_pool = open_dataset(root).in_pool_episodes()
    assert in_pool  # the layout labels enough episodes that one is held out for the probe
    # A stage that learns from actions sees the probe's in-pool episodes unlabelled; the probe (labels="all") not.
    labelled = {e: flag and e not in in_pool for shard in LAYOUT for e, _, flag in shard}
    every_label = {int(w["episode"]) for w in WindowDataset(root, "train", WindowSpec(labels="all", episode=True), epochs=1) if w["labelled"]}
    assert every_label == {e for shard in LAYOUT for e, _, flag in shard if flag}
    ks = collections.Counter()
    for w in windows:
        episode, t = window_id(w)
        k = int(w["k"])
        ks[k] += 1
        # The record holding transition t: its first frame pads the stacks, its last bounds t + k.
        step = (chunk_frames or frames[episode]) - 1  # transitions a record holds
        start = t // step * step
        end = min(start + step, frames[episode] - 1)
        assert 1 <= k <= min(4, end - t)
        want_obs = np.maximum(np.arange(t - 2, t + 1), start)
        want_future = np.maximum(np.arange(t + k - 2, t + k + 1), start)
        assert w["obs"].shape == (3, SIZE, SIZE, 3) and w["obs"].dtype == np.uint8
        np.testing.assert_array_equal(w["obs"][:, 0, 0, 1], want_obs)
        np.testing.assert_array_equal(w["future"][:, 0, 0, 1], want_future)
        assert (w["obs"][..., 0] == episode).all() and (w["future"][..., 0] == episode).all()
        np.testing.assert_array_equal(mask_index(w["obs_mask"]), want_obs)
        np.testing.assert_array_equal(mask_index(w["future_mask"]), want_future)
        assert mask_index(w["next_mask"]) == t + 1 and w["next_mask"].shape == (SIZE, SIZE)
        assert w["labelled"] == labelled[episode]
        want_action = true_action(episode, np.array(t)) if labelled[episode] else np.zeros(2, np.float32)
        np.testing.assert_array_equal(w["action"], want_action, strict=True)
        np.testing.assert_array_equal(w["state"], [episode, t])
        np.testing.assert_array_equal(w["next_state"], [episode, t + 1])  # the probe's camera motion reads t -> t+1
    assert set(ks) == set(range(1, 4 if chunk_frames else 5))  # U{1..4}, clipped to chunks of 3 transitions


def test_labelled_only_and_no_masks(tmp_path, backend):
    layout = [[(0, 5, False)], [(1, 6, True), (2, 4, False)], [(3, 3, False)]]
    root = write_dataset(tmp_path, backend, layout)
    dataset = WindowDataset(root, "train", WindowSpec(mask_source=None, labelled_only=True), epochs=1)
    windows = list(dataset)

    assert dataset.shards == [1]  # the index shows which shards hold labelled records: only those are read
    assert sorted(map(window_id, windows)) == transitions(layout, labelled_only=True)
    assert all(w["labelled"] for w in windows) and not any("next_mask" in w for w in windows)
    unlabelled = write_dataset(tmp_path / "unlabelled", backend, [[(0, 5, False)]])
    with pytest.raises(UsageError, match="no labelled records"):
        WindowDataset(unlabelled, "train", WindowSpec(labelled_only=True))

    # One labelled record: one loader process, however many are asked for (a second would have none to read and
    # stall a stream that runs forever); every record of the split keeps both busy.
    forever = WindowDataset(root, "train", WindowSpec(mask_source=None, labelled_only=True))
    loader = make_loader(forever, 2, num_workers=2)
    assert loader.num_workers == 1 and next(iter(loader))["labelled"].all()
    assert make_loader(WindowDataset(root, "train", WindowSpec(mask_source=None)), 2, num_workers=2).num_workers == 2

    # Labelled and unlabelled records alternating in one shard, two workers: each worker gets a labelled one
    # (dealt before the filter, the second worker got the two unlabelled records and nothing to read).
    mixed = write_dataset(tmp_path / "mixed", backend, [[(0, 5, True), (1, 4, False), (2, 5, True), (3, 4, False)]])
    stream = make_loader(WindowDataset(mixed, "train", WindowSpec(mask_source=None, labelled_only=True)), 2, num_workers=2)
    seen = [window_id(window) for window in itertools.islice(unbatch(iter(stream)), 16)]
    assert stream.num_workers == 2 and {episode for episode, _ in seen} == {0, 2}


def test_bad_arguments_are_usage_errors(tmp_path):
    root = write_dataset(tmp_path, "webdataset", LAYOUT)
    with pytest.raises(UsageError, match="no 'sam_vit_h' masks"):
        WindowDataset(root, "train", WindowSpec(mask_source="sam_vit_h"))
    with pytest.raises(UsageError, match="unknown fields"):
        WindowDataset(root, "train", WindowSpec(fields=("reward",)))
    with pytest.raises(UsageError, match="part of every window"):
        WindowSpec(fields=("action",))
    with pytest.raises(UsageError, match="part of every window"):
        WindowSpec(next_fields=("mask",))  # next_mask is every window's
    with pytest.raises(UsageError, match="unknown fields"):
        WindowDataset(root, "train", WindowSpec(next_fields=("reward",)))
    with pytest.raises(UsageError, match="outside world size"):
        WindowDataset(root, "train", WindowSpec(), rank=2, world_size=2)


@pytest.mark.parametrize("shards", [6, 2], ids=["by-shard", "by-record"])  # 2 ranks x 2 workers = 4 readers
def test_every_transition_once_per_epoch_across_ranks_and_workers(tmp_path, backend, shards):
    layout = [[(2 * s, 5, True), (2 * s + 1, 4 + s, s % 2 == 0)] for s in range(shards)]
    root = write_dataset(tmp_path, backend, layout)
    loaders = [make_loader(WindowDataset(root, "train", WindowSpec(), 3, 8, epochs=1, rank=rank, world_size=2), 4, num_workers=2) for rank in range(2)]
    epochs = []
    for _ in range(2):  # persistent workers: the second pass is the next epoch
        per_rank = [[window_id(w) for w in unbatch(loader)] for loader in loaders]
        assert sorted(per_rank[0] + per_rank[1]) == transitions(layout)  # each once, none twice
        assert per_rank[0] and per_rank[1]
        epochs.append(per_rank)
    assert epochs[0] != epochs[1]


def test_shuffling_is_seeded_and_mixes_records(tmp_path, backend):
    layout = [[(e, 10, True)] for e in range(6)]
    root = write_dataset(tmp_path, backend, layout)

    def order(seed: int, buffer: int) -> list[tuple[int, int]]:
        dataset = WindowDataset(root, "train", WindowSpec(mask_source=None), seed, shuffle_buffer=buffer, epochs=1)
        return [window_id(w) for w in dataset]

    assert order(0, 16) == order(0, 16) and order(0, 16) != order(1, 16)
    assert sorted(order(0, 16)) == transitions(layout)
    unbuffered = [episode for episode, _ in order(0, 0)]
    runs = [episode for i, episode in enumerate(unbuffered) if i == 0 or unbuffered[i - 1] != episode]
    assert len(runs) == 6  # without a buffer a record's windows come together ...
    assert [t for e, t in order(0, 0) if e == runs[0]] != list(range(9))  # ... in random order
    buffered = [episode for episode, _ in order(0, 16)]
    assert sum(a != b for a, b in zip(buffered, buffered[1:])) > 20  # with one, records interleave


def test_shuffle_buffer_holds_at_most_its_size_plus_one():
    pulled = 0

    def items() -> Iterator[int]:
        nonlocal pulled
        for i in range(100):
            pulled += 1
            yield i

    out = []
    for item in shuffled(items(), 10, np.random.default_rng(0)):
        assert pulled - len(out) <= 11  # held: pulled but not yet handed out
        out.append(item)
    assert sorted(out) == list(range(100)) and out != list(range(100))


def peak_traced_bytes(root: Path) -> int:
    """Peak bytes allocated (numpy arrays included) while reading one epoch with a 16-window buffer."""
    dataset = WindowDataset(root, "train", WindowSpec(future_max=3), shuffle_buffer=16, epochs=1)
    tracemalloc.start()
    try:
        for _ in dataset:
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_dataset(tmp_path, backend):
    size, frames = 32, 20
    small = write_dataset(tmp_path / "small", backend, [[(e, frames, True)] for e in range(3)], size=size)
    large = write_dataset(tmp_path / "large", backend, [[(e, frames, True)] for e in range(12)], size=size)
    window_bytes = 7 * size * size * 4  # obs, future and next frames (3 bytes a pixel) and masks (1)
    record_bytes = frames * size * size * 4
    peak_traced_bytes(small)  # warm up: the first pass also allocates what imports and caches keep
    small_peak, large_peak = peak_traced_bytes(small), peak_traced_bytes(large)
    # Held: the buffer, one record and the reader's buffers (1 MiB for the tar's end check); all of the large
    # dataset's windows would be 12 x 19 x 28 KiB = 6.5 MB.
    assert large_peak < 17 * window_bytes + 4 * record_bytes + (2 << 20)
    assert large_peak < 1.2 * small_peak


def test_collated_batches_keep_dtypes(tmp_path):
    root = write_dataset(tmp_path, "zarr", LAYOUT)
    batch = next(iter(make_loader(WindowDataset(root, "train", WindowSpec(stack=2, fields=("state",))), 5)))
    assert {name: (value.dtype, tuple(value.shape)) for name, value in batch.items()} == {
        "obs": (torch.uint8, (5, 2, SIZE, SIZE, 3)),
        "future": (torch.uint8, (5, 2, SIZE, SIZE, 3)),
        "next": (torch.uint8, (5, SIZE, SIZE, 3)),
        "obs_mask": (torch.uint8, (5, 2, SIZE, SIZE)),
        "future_mask": (torch.uint8, (5, 2, SIZE, SIZE)),
        "next_mask": (torch.uint8, (5, SIZE, SIZE)),
        "action": (torch.float32, (5, 2)),
        "labelled": (torch.bool, (5,)),
        "k": (torch.int64, (5,)),
        "state": (torch.float32, (5, 2)),
    }


def test_action_variance(tmp_path, backend):
    root = write_dataset(tmp_path, backend, LAYOUT, chunk_frames=4)
    labelled = [true_action(e, np.arange(n - 1)) for shard in LAYOUT for e, n, flag in shard if flag]
    np.testing.assert_allclose(action_variance(root), np.concatenate(labelled).var(0), rtol=1e-6)
    stats = {"split": "train", "var": [0.25, 0.5]}  # collect's, over every transition: preferred
    with_stats = write_dataset(tmp_path / "stats", backend, LAYOUT, stats=stats)
    np.testing.assert_array_equal(action_variance(with_stats), [0.25, 0.5])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free local port, and the AWS variables that point boto and s3fs at it."""
    s3fs = pytest.importorskip("s3fs")
    s3fs.S3FileSystem.clear_instance_cache()  # filesystems made before hold the endpoint of their day
    ThreadedMotoServer = pytest.importorskip("moto.server").ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ENDPOINT_URL", endpoint)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            env.setenv(name, "test")
        yield endpoint
    server.stop()


def read_windows(source: str | Path, workers: int = 0) -> list[dict]:
    spec = WindowSpec(future_max=3, fields=("state",))
    dataset = WindowDataset(source, "train", spec, seed=5, shuffle_buffer=8, epochs=1)
    return list(unbatch(make_loader(dataset, 3, workers)))


def assert_same_windows(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], strict=True)


@pytest.mark.slow
def test_reads_from_s3_and_file_urls(tmp_path, backend, s3_endpoint):
    import fsspec

    root = write_dataset(tmp_path / "local", backend, LAYOUT)
    local = read_windows(root)
    assert_same_windows(read_windows(root.as_uri()), local)

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    bucket = f"masklam-{backend}"
    fs.mkdir(bucket)
    fs.put(f"{root}/", f"{bucket}/data/cheetah", recursive=True)
    url = f"s3://{bucket}/data/cheetah"
    assert_same_windows(read_windows(url), local)
    assert_same_windows(read_windows(url, workers=2), read_windows(root, workers=2))  # forked workers read S3 too


@pytest.mark.parametrize(
    ("labelled", "held"),
    [((True, True), set()), ((True, False, True, True), {3}), ((True,) * 10, {8, 9}), ((True, True, False, True, False), {3})],
)
def test_the_probes_in_pool_episodes_are_the_last_fifth_of_the_labelled(tmp_path, labelled, held):
    """Rounded up, of labelled train episodes only, and none with fewer than 3 labelled (the probe needs 2 to fit)."""
    layout = [[(episode, 3, flag) for episode, flag in enumerate(labelled)]]
    assert open_dataset(write_dataset(tmp_path, "webdataset", layout, 0)).in_pool_episodes() == held
