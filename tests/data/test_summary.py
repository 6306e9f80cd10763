"""`masklam info` on what users bring: an ingested video says where it came from and shows no simulator's
columns (distractors, returns, Var(a) of no actions); a LeRobot folder is named as one, with the command that
turns it into a masklam dataset."""

from __future__ import annotations

import av
import numpy as np

from masklam.data.dataset import open_dataset
from masklam.data.ingest import IngestConfig, ingest
from masklam.data.lerobot_format import export_lerobot
from masklam.data.summary import render_summary, summarize


def test_info_on_an_ingested_video_and_on_its_lerobot_export(masklam_cli, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    with av.open(str(videos / "clip.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 32
        for i in range(12):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i, np.uint8), format="rgb24")))
        container.mux(stream.encode())
    data = tmp_path / "data"
    ingest(IngestConfig(str(videos), size=32, test_episodes=0), data, show_progress=False)

    shown = render_summary(summarize(open_dataset(data)))
    assert f"source      video {videos}" in shown and "distractors" not in shown
    assert "masks       none yet (masklam segment)" in shown and "Var(a)      - (no labelled actions)" in shown
    assert "return mean" not in shown and shown.splitlines()[-2].split() == ["train", "1", "0", "12"]  # no returns column

    # view before any masks: frames only, no "oracle" to miss; with one source, that source by default
    from masklam.data.view import NONE, default_mask_source
    from masklam.segment.writer import write_mask_source

    assert default_mask_source(open_dataset(data)) == NONE
    viewed = masklam_cli("view", str(data), "--out", str(tmp_path / "before.png"), "--episodes", "1", "--frames", "2")
    assert viewed.returncode == 0 and (tmp_path / "before.png").is_file(), viewed.stderr
    write_mask_source(data, "mine", {"kind": "all agent"}, lambda records: (np.ones(r.steps["rgb"].shape[:3], np.uint8) for r in records), show_progress=False)
    assert default_mask_source(open_dataset(data)) == "mine"

    export_lerobot(str(data), tmp_path / "lerobot", "image", False, show_progress=False)
    result = masklam_cli("info", str(tmp_path / "lerobot"))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'lerobot'} is a LeRobot dataset, not a masklam one: make one from it with `masklam ingest {tmp_path / 'lerobot'} --out DATA`"
    ]
