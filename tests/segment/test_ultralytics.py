"""The Ultralytics backend with a random-weight MobileSAM saved under its official file name."""

import importlib.util

import numpy as np
import pytest
import torch

# Not imported at collection: importing ultralytics patches PIL.Image.open for the whole process, which
# would change how other tests' corrupt images fail. Only this module's tests import it.
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("ultralytics") is None, reason="the ultralytics extra is not installed (AGPL-3.0, optional)"),
    pytest.mark.usefixtures("pil_restored"),
]

from masklam.data.dataset import open_dataset  # noqa: E402
from masklam.errors import UsageError  # noqa: E402
from masklam.segment.prompts import parse_prompt  # noqa: E402
from masklam.segment.run import SegmentConfig, segment_dataset  # noqa: E402
from masklam.segment.ultralytics_backend import load_ultralytics  # noqa: E402


@pytest.fixture(scope="module")
def mobile_sam(random_mobile_sam):
    return random_mobile_sam


@pytest.fixture(scope="module")
def sam2_t(tmp_path_factory):
    from ultralytics.models.sam.build import build_sam2_t

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ultralytics") / "sam2_t.pt"
    torch.save(build_sam2_t().state_dict(), path)  # the smallest SAM 2, random weights
    return path


@pytest.mark.slow
def test_segment_with_an_ultralytics_model(dataset_factory, mobile_sam):
    data = dataset_factory(steps=2)  # 4 shards of 3 frames, each encoded at 256 px (1024 by default: 16x the work)
    config = SegmentConfig(str(data), f"ultralytics:{mobile_sam}", parse_prompt([], None, "oracle-box"), imgsz=256)
    assert config.source == "ultralytics_mobile_sam"
    result = segment_dataset(config, show_progress=False)
    assert result["registered"] and result["written"] == 4
    dataset = open_dataset(data)
    described = dataset.info["mask_sources"]["ultralytics_mobile_sam"]
    assert described["kind"] == "ultralytics:mobile_sam.pt" and described["imgsz"] == 256
    for record in dataset.records("train", mask_sources=("oracle", "ultralytics_mobile_sam")):
        masks = record.masks["ultralytics_mobile_sam"]
        assert masks.shape == record.masks["oracle"].shape and set(np.unique(masks)) <= {0, 1}


@pytest.mark.slow
def test_fastsam_runs_the_prompt_chain(dataset_factory, tmp_path):
    from ultralytics import YOLO

    weights = tmp_path / "FastSAM-s.pt"
    YOLO("yolov8n-seg.yaml").save(weights)  # FastSAM is a YOLO instance segmenter: the smallest one, random weights
    data = dataset_factory(steps=2)
    config = SegmentConfig(str(data), f"ultralytics:{weights}", parse_prompt(["16,16", "neg:2,2"], None, None))
    assert segment_dataset(config, show_progress=False)["registered"]
    record = next(open_dataset(data).records("test", mask_sources=("ultralytics_fastsam_s",)))
    assert record.masks["ultralytics_fastsam_s"].shape == (3, 32, 32)


@pytest.mark.slow
def test_sam2_follows_the_prompt_chain(sam2_t):
    from masklam.segment.prompts import Prompt
    from masklam.segment.ultralytics_backend import UltralyticsSegmenter

    segmenter = UltralyticsSegmenter(load_ultralytics(str(sam2_t)), parse_prompt(["16,16"], None, None), imgsz=256)
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    masks = segmenter.segment(frames, Prompt(((16.0, 16.0),), (1,), (4.0, 4.0, 28.0, 28.0)))
    assert masks.shape == (2, 32, 32) and masks.dtype == np.uint8


@pytest.mark.slow
def test_sam2_video_predictor_masks_every_frame_of_a_clip(sam2_t):
    from masklam.segment.prompts import Prompt
    from masklam.segment.ultralytics_backend import Sam2VideoSegmenter

    segmenter = Sam2VideoSegmenter(str(sam2_t), parse_prompt(["16,16"], None, None), imgsz=256)
    # Every frame costs a SAM 2 pass: at 256 px, the shortest clips that show it (2 frames, then 1).
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    first = Prompt(((16.0, 16.0),), (1,), (4.0, 4.0, 28.0, 28.0))
    masks = segmenter.segment(frames, first)
    assert masks.shape == (2, 32, 32) and masks.dtype == np.uint8 and masks.any()
    assert np.array_equal(segmenter.segment(frames, first), masks)  # each clip starts from a fresh memory
    assert segmenter.segment(frames[:1], first).shape == (1, 32, 32)


def test_video_propagation_needs_sam2(tmp_path):
    from masklam.segment.run import SegmentConfig

    with pytest.raises(UsageError, match="--propagate video needs SAM 2"):
        SegmentConfig(str(tmp_path), "ultralytics:mobile_sam.pt", propagate="video")
    with pytest.raises(UsageError, match="--propagate video needs SAM 2"):
        SegmentConfig(str(tmp_path), "sam_vit_b", propagate="video")
    with pytest.raises(UsageError, match="unknown --propagate"):
        SegmentConfig(str(tmp_path), "sam_vit_b", propagate="flow")
    assert SegmentConfig(str(tmp_path), "ultralytics:w/sam2.1_t.pt", propagate="video").propagate == "video"


def test_imgsz_is_for_ultralytics_models_and_a_multiple_of_32(tmp_path):
    from masklam.segment.run import SegmentConfig

    with pytest.raises(UsageError, match="--imgsz is for ultralytics"):
        SegmentConfig(str(tmp_path), "mobile_sam", imgsz=512)
    for bad in (0, 100, 32):
        with pytest.raises(UsageError, match=f"--imgsz {bad}: give a multiple of 32"):
            SegmentConfig(str(tmp_path), "ultralytics:w/sam_b.pt", imgsz=bad)
    assert SegmentConfig(str(tmp_path), "ultralytics:w/sam_b.pt", imgsz=512).imgsz == 512


def test_missing_or_renamed_weights_are_refused_without_downloading(tmp_path):
    with pytest.raises(UsageError, match="mobile_sam.pt from https://github.com/ultralytics/assets/releases"):
        load_ultralytics(str(tmp_path / "mobile_sam.pt"))
    (tmp_path / "my_sam.pt").write_bytes(b"")
    with pytest.raises(UsageError, match="keep the official one"):
        load_ultralytics(str(tmp_path / "my_sam.pt"))
    assert not (tmp_path / "mobile_sam.pt").exists()


@pytest.mark.slow
def test_loading_leaves_pil_as_it_was(mobile_sam):
    import subprocess
    import sys

    code = (
        "from PIL import Image; before = Image.open\n"
        "from masklam.segment.ultralytics_backend import load_ultralytics\n"
        f"load_ultralytics({str(mobile_sam)!r}); assert Image.open is before"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
