"""SAM through the whole command, with small random-weight checkpoints of segment-anything's architecture
saved to files and loaded by the same code as the official weights."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything", reason="the sam extra is not installed (pip install 'masklam[sam]' torch==2.14.1 torchvision==0.29.1)")

from masklam.data.dataset import open_dataset  # noqa: E402
from masklam.errors import UsageError  # noqa: E402
from masklam.segment.prompts import parse_prompt  # noqa: E402
from masklam.segment.run import SegmentConfig, segment_dataset  # noqa: E402
from masklam.segment.sam import SamArchitecture, SamSegmenter, checkpoint_path, load_sam  # noqa: E402


def test_the_architecture_is_read_off_the_checkpoint(small_checkpoint, small_sam):
    assert SamArchitecture.of(torch.load(small_checkpoint, weights_only=True)) == small_sam
    other = replace(small_sam, embed_dim=48, num_heads=3, depth=3, global_attn_indexes=(0, 2), decoder_depth=1)
    assert SamArchitecture.of(other.build().state_dict()) == other
    model, architecture = load_sam(small_checkpoint)
    assert architecture == small_sam and not model.training


def test_batched_encoding_matches_one_frame_at_a_time(small_checkpoint):
    model, _ = load_sam(small_checkpoint)
    frames = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    segmenter = SamSegmenter(model, parse_prompt(["16,16"], None, None), batch_size=4)
    batched = segmenter.encode(frames)
    single = torch.cat([segmenter.encode(frames[i : i + 1]) for i in range(len(frames))])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-4)
    first = parse_prompt(["16,16"], None, None).first(None)
    one_by_one = SamSegmenter(model, segmenter.prompts, batch_size=1).segment(frames, first)
    together = segmenter.segment(frames, first)
    assert together.shape == (5, 32, 32) and together.dtype == np.uint8
    assert (together != one_by_one).mean() < 0.01


def segment_args(data: Path, checkpoint: Path, *extra: str) -> list[str]:
    return [
        "segment",
        str(data),
        "--model",
        "sam_vit_h",
        "--checkpoint",
        str(checkpoint),
        "--prompt",
        "oracle-box",
        "--batch-size",
        "4",
        "--no-progress",
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["webdataset", "zarr"])
def test_segment_end_to_end_shard_parallel_and_resumable(masklam_cli, dataset_factory, small_checkpoint, backend):
    data = dataset_factory(backend)
    frames_before = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file() and "mask" not in str(p) and p.name != "info.json"}
    first = masklam_cli(*segment_args(data, small_checkpoint, "--rank", "0", "--world-size", "2"))
    assert first.returncode == 0, first.stderr
    assert "2 of this rank's 2 shards written; waiting" in first.stdout
    assert "sam_vit_h" not in open_dataset(data).info["mask_sources"]  # not until every shard is done
    second = masklam_cli(*segment_args(data, small_checkpoint, "--rank", "1", "--world-size", "2"))
    assert second.returncode == 0 and "registered" in second.stdout, second.stderr
    again = masklam_cli(*segment_args(data, small_checkpoint))
    assert "0 of this rank's 4 shards written" in again.stdout  # resumed: nothing left to do

    dataset = open_dataset(data)
    info = dataset.info["mask_sources"]["sam_vit_h"]
    assert info["architecture"]["embed_dim"] == 32 and info["prompt"] == "oracle-box"
    markers = sorted(p.name for p in (data / "segment" / "sam_vit_h").rglob("shard-*.json"))
    assert len(markers) == 4  # every shard of both splits exactly once
    for split in ("train", "test"):
        for record in dataset.records(split, mask_sources=("oracle", "sam_vit_h")):
            assert record.masks["sam_vit_h"].shape == record.masks["oracle"].shape
            assert set(np.unique(record.masks["sam_vit_h"])) <= {0, 1}
    unchanged = {p: p.stat().st_mtime_ns for p in frames_before if p.exists()}
    assert unchanged == frames_before  # frames, index and collect files untouched (info.json aside)


def test_chunked_episodes_continue_their_prompt_chain(dataset_factory, small_checkpoint):
    data = dataset_factory(chunk_steps=4)
    result = segment_dataset(SegmentConfig(str(data), "sam_vit_b", parse_prompt([], None, "oracle-box"), str(small_checkpoint)), show_progress=False)
    assert result["registered"]
    whole = open_dataset(data).episode("train", 0, mask_sources=("sam_vit_b",))
    assert whole.masks["sam_vit_b"].shape[0] == whole.meta.episode_frames


def test_missing_or_wrong_weights_say_what_to_do(masklam_cli, tmp_path, monkeypatch, dataset_factory):
    monkeypatch.setenv("MASKLAM_SAM_CHECKPOINTS", str(tmp_path))
    with pytest.raises(UsageError, match=r"sam_vit_h_4b8939\.pth.*dl\.fbaipublicfiles\.com.*--checkpoint"):
        checkpoint_path("sam_vit_h", None)
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(b"")
    assert checkpoint_path("sam_vit_b", None) == tmp_path / "sam_vit_b_01ec64.pth"  # the cache folder
    with pytest.raises(UsageError, match="no SAM checkpoint at"):
        checkpoint_path("sam_vit_l", tmp_path / "missing.pth")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(UsageError, match="not a segment-anything SAM state dict"):
        load_sam(tmp_path / "other.pth")
    data = dataset_factory()
    done = masklam_cli(*segment_args(data, tmp_path / "missing.pth"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "missing.pth" in done.stderr
    assert not (data / "segment").exists()


def test_the_official_vit_b_layout_is_read_correctly():
    official = SamArchitecture(
        image_size=1024,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        window_size=14,
        global_attn_indexes=(2, 5, 8, 11),
        decoder_depth=2,
        decoder_mlp_dim=2048,
    )
    from segment_anything import sam_model_registry

    assert SamArchitecture.of(sam_model_registry["vit_b"]().state_dict()) == official  # the package's own builder


def test_sam_as_the_teacher_of_a_distilled_student(dataset_factory, small_checkpoint):
    from masklam.segment.distill import DistillConfig

    data = dataset_factory()
    config = SegmentConfig(
        str(data), "sam_vit_l", parse_prompt([], None, "oracle-box"), str(small_checkpoint), distill=DistillConfig(20, steps=3, batch_size=4)
    )
    result = segment_dataset(config, show_progress=False)
    assert result["registered"] and result["distill"]["teacher_frames"] >= 20
    assert "sam_vit_l_student" in open_dataset(data).info["mask_sources"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["half", "bf16"])
def test_the_segmenter_runs_in_reduced_precision(small_sam, dtype):
    """--half on a GPU: the prompt encoder's float32 Fourier features met a float16 matrix and crashed before any
    frame; the encoder and decoder now run in the reduced precision, the prompt encoder in float32 (CPU here)."""
    from masklam.segment.prompts import Prompt, PromptSpec

    torch.manual_seed(0)
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    prompt = Prompt(points=((10.0, 12.0),), labels=(1,))
    full = SamSegmenter(small_sam.build().eval(), PromptSpec(), batch_size=2)
    torch.manual_seed(0)
    reduced = SamSegmenter(small_sam.build().eval(), PromptSpec(), batch_size=2, dtype=dtype)
    embedding, low = full.encode(frames), reduced.encode(frames)
    assert low.dtype == dtype and torch.allclose(low.float(), embedding, atol=0.1 * embedding.abs().max().item())
    mask = reduced.decode(low[:1], prompt, 32)
    assert mask.shape == (32, 32) and mask.dtype == np.uint8
