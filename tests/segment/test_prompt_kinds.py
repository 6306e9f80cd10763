"""Every kind of prompt through the whole `segment` path, on a small random-weight SAM (fast; the prompt
chain and the decoder interface are the ones MobileSAM and the official SAM go through)."""

import json

import numpy as np
import pytest

pytest.importorskip("segment_anything", reason="the sam extra is not installed (pip install 'masklam[sam]' torch==2.14.1 torchvision==0.29.1)")

from masklam.data.dataset import open_dataset  # noqa: E402
from masklam.segment.run import SegmentConfig, segment_dataset  # noqa: E402


@pytest.mark.parametrize(
    "prompt",
    [
        {"prompt": "oracle-box"},
        {"point": ["16,16", "neg:1,1"], "box": "4,4,28,28"},
        {"prompts": "json"},
        {"prompts": "csv"},
        {"prompt": "auto"},
        {"prompt": "oracle-box", "reprompt": False},
    ],
)
def test_every_prompt_kind_runs_end_to_end(dataset_factory, small_checkpoint, tmp_path, prompt):
    data = dataset_factory(chunk_steps=4)  # chunks: a chain (and its re-prompting) continues across them
    if prompt.get("prompts") == "json":
        path = tmp_path / "prompts.json"
        path.write_text(json.dumps({"0": {"box": [2, 2, 30, 30]}, "*": {"points": [[16, 16]]}}))
        prompt = {"prompts": str(path)}
    elif prompt.get("prompts") == "csv":
        path = tmp_path / "prompts.csv"
        path.write_text("episode,x,y,label\n*,16,16,1\n*,1,1,0\n")
        prompt = {"prompts": str(path)}
    config = SegmentConfig.from_options(str(data), "sam_vit_b", checkpoint=str(small_checkpoint), **prompt)
    result = segment_dataset(config, show_progress=False)
    assert result["registered"]
    dataset = open_dataset(data)
    info = dataset.info["mask_sources"]["sam_vit_b"]
    assert info["reprompt"] == prompt.get("reprompt", True)
    frames = 0
    for split in ("train", "test"):
        for record in dataset.records(split, mask_sources=("oracle", "sam_vit_b")):
            masks = record.masks["sam_vit_b"]
            assert masks.shape == record.masks["oracle"].shape and set(np.unique(masks)) <= {0, 1}
            frames += len(masks)
    assert frames == 4 * 13  # 4 episodes of 11 frames in chunks of 4 steps, which repeat the frame where they join
