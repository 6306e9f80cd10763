import numpy as np
import pytest

from masklam.data.dataset import open_dataset
from masklam.errors import UsageError
from masklam.segment.compare import compare_sources
from masklam.segment.transforms import MaskTransform, occlude
from masklam.segment.writer import write_mask_source


def square(size: int = 32, lo: int = 8, hi: int = 24) -> np.ndarray:
    mask = np.zeros((4, size, size), np.uint8)
    mask[:, lo:hi, lo:hi] = 1
    return mask


def test_erode_and_dilate_move_the_edge_by_the_radius():
    rng = np.random.default_rng(0)
    masks = square()
    eroded = MaskTransform(erode=2).apply(masks, rng)
    dilated = MaskTransform(dilate=2).apply(masks, rng)
    assert eroded[0, 10:22, 10:22].all() and eroded.sum() == 4 * 12 * 12
    assert dilated.sum() > masks.sum() and dilated[0, 6:26, 6:26].sum() == dilated[0].sum()


def test_drop_and_occlude_take_the_fractions_asked():
    rng = np.random.default_rng(0)
    masks = np.ones((2000, 8, 8), np.uint8)
    dropped = MaskTransform(drop=0.25).apply(masks, rng)
    assert abs((dropped.sum((1, 2)) == 0).mean() - 0.25) < 0.03
    blanked = occlude(square()[0].astype(bool), 0.25, (0.3, 0.9))
    assert square()[0].sum() - blanked.sum() == 8 * 8  # a quarter of the 16 x 16 box
    assert not (blanked & ~square()[0].astype(bool)).any()
    # one placement per record: every frame of a moving agent loses the same part of its box
    moving = np.zeros((3, 32, 32), np.uint8)
    for t in range(3):
        moving[t, 4 + 2 * t : 20 + 2 * t, 4 + 3 * t : 20 + 3 * t] = 1
    occluded = MaskTransform(occlude=0.25).apply(moving, rng)
    holes = [np.argwhere(moving[t] & ~occluded[t].astype(bool)).min(0) - (4 + 2 * t, 4 + 3 * t) for t in range(3)]
    assert all((hole == holes[0]).all() for hole in holes)


def test_bad_transforms_are_refused():
    for kwargs in ({}, {"erode": 1, "dilate": 1}, {"drop": 1.5}, {"erode": -1}):
        with pytest.raises(UsageError):
            MaskTransform(**kwargs)


def test_a_derived_source_is_written_registered_reproducible_and_scored(dataset_factory):
    data = dataset_factory()
    transform = MaskTransform(erode=1, seed=4)
    name = transform.default_name("oracle")
    assert name == "oracle_erode1"
    result = write_mask_source(data, name, transform.describe("oracle"), transform("oracle"), ("oracle",), show_progress=False)
    assert result["registered"] and result["written"] == 4  # 3 train + 1 test shards
    dataset = open_dataset(data)
    assert dataset.info["mask_sources"][name]["from"] == "oracle"
    assert dataset.info["mask_sources"][name]["coverage"] < dataset.info["mask_sources"]["oracle"]["coverage"]
    for record in dataset.records("train", mask_sources=("oracle", name)):
        expected = transform.apply(record.masks["oracle"], np.random.default_rng())
        np.testing.assert_array_equal(record.masks[name], expected)  # erosion draws nothing
    again = write_mask_source(data, name, transform.describe("oracle"), transform("oracle"), ("oracle",), show_progress=False)
    assert again["written"] == 0  # every shard done: a re-run resumes with nothing left

    scores = compare_sources(data, "oracle", name, out=data / "compare")
    assert scores["overall"]["precision"] == 1.0 and scores["overall"]["recall"] < 0.9
    assert all(e["precision"] == 1.0 for e in scores["episodes"]) and len(scores["episodes"]) == 4
    assert (data / "compare" / f"compare-{name}-vs-oracle-worst.png").exists()
    assert scores["worst_frames"] == sorted(scores["worst_frames"], key=lambda f: f["iou"])
    assert compare_sources(data, "oracle", "oracle")["overall"] == {"iou": 1.0, "precision": 1.0, "recall": 1.0}

    # Training reads a derived source like any other (data.mask_source).
    from masklam.train.loader import WindowDataset, WindowSpec

    window = next(iter(WindowDataset(data, "train", WindowSpec(mask_source=name), epochs=1)))
    assert window["next_mask"].sum() < window["next_mask"].size and window["obs_mask"].shape == (3, 32, 32)


def test_the_writer_refuses_what_would_damage_a_dataset(dataset_factory):
    data = dataset_factory()
    drop = MaskTransform(drop=0.5)
    with pytest.raises(UsageError, match="never replaced"):
        write_mask_source(data, "oracle", drop.describe("oracle"), drop("oracle"), ("oracle",), show_progress=False)
    with pytest.raises(UsageError, match="lower-case"):
        write_mask_source(data, "Bad-Name", drop.describe("oracle"), drop("oracle"), ("oracle",), show_progress=False)
    with pytest.raises(UsageError, match="no \\['sam'\\] masks"):
        write_mask_source(data, "x", drop.describe("sam"), drop("sam"), ("sam",), show_progress=False)
    write_mask_source(data, "half", drop.describe("oracle"), drop("oracle"), ("oracle",), show_progress=False)
    other = MaskTransform(drop=0.25)
    with pytest.raises(UsageError, match="other settings"):
        write_mask_source(data, "half", other.describe("oracle"), other("oracle"), ("oracle",), show_progress=False)
    before = (data / "info.json").read_bytes()
    assert write_mask_source(data, "half", other.describe("oracle"), other("oracle"), ("oracle",), overwrite=True, show_progress=False)["written"] == 4
    assert (data / "info.json").read_bytes() != before and open_dataset(data).info["mask_sources"]["half"]["drop"] == 0.25


def test_the_progress_bar_counts_frames_as_their_masks_are_made(dataset_factory, monkeypatch):
    """A mask function that reads a whole shard before its first mask (a tracker) used to leave the bar at the
    frames read, not made: it reached the end before any mask existed."""
    import masklam.segment.writer as writer

    bars = []

    class Recorder:
        def __init__(self, total, **_):
            self.total, self.n, self.seen = total, 0, []
            bars.append(self)

        def update(self, frames):
            self.n += frames

        def close(self):
            pass

    def buffering(records):
        records = list(records)
        for record in records:
            bars[-1].seen.append(bars[-1].n)  # the bar's count when this mask is handed over
            yield record.masks["oracle"]

    monkeypatch.setattr(writer, "tqdm", Recorder)
    data = dataset_factory()
    write_mask_source(data, "copy", {"kind": "copy of oracle"}, buffering, ("oracle",), show_progress=True)
    bar = bars[0]
    assert bar.n == bar.total == sum(m.frames for s in ("train", "test") for m in open_dataset(data).index(s))
    assert bar.seen[0] == 0 and bar.seen == sorted(bar.seen)  # nothing counted before the first mask is made
