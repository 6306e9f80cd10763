"""The schema's checks at write time and on single fields (the damaged-dataset module covers reading)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from masklam.atomic import dumps_json, json_line
from masklam.data.collect import finite_or_none
from masklam.errors import UsageError


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_labelled_action_that_is_not_finite_is_refused_at_write_time(tmp_path, backend, features, make_episode, value):
    _, chunks = make_episode(3, 9, 4, labelled=True)
    chunks[1].steps["action"][2, 1] = value
    with pytest.raises(UsageError, match=r"episode 3 of split 'train' \(record e000003-c001\).*frame 5"):
        backend.write_shard(tmp_path, "train", 0, chunks, features)
    assert not any(tmp_path.rglob("*.tar")) and not (tmp_path / "data.zarr").exists()


def test_the_final_frame_and_unlabelled_episodes_may_hold_nan(tmp_path, backend, features, make_episode):
    _, labelled = make_episode(0, 5, 9, labelled=True)  # NaN at the final frame: no action is taken there
    _, unlabelled = make_episode(1, 5, 9, labelled=False)
    backend.write_shard(tmp_path, "train", 0, labelled + unlabelled, features)


def test_masklam_json_is_strict():
    with pytest.raises(ValueError):
        dumps_json({"mean_return": float("nan")})
    assert finite_or_none(float("nan")) is None and finite_or_none(np.float64(2.5)) == 2.5
    line = json_line({"step": 3, "loss": np.float64("nan"), "parts": [1.5, float("-inf")]})
    assert json.loads(line) == {"step": 3, "loss": None, "parts": [1.5, None]} and "NaN" not in line
