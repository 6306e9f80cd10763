import numpy as np
import pytest

from masklam.errors import UsageError
from masklam.segment.prompts import follow, mask_box, parse_prompt


def test_follow_prompts_with_the_box_and_points_inside_the_mask():
    mask = np.zeros((32, 32), np.uint8)
    mask[4:20, 10:30] = 1
    prompt = follow(mask, points=3)
    assert prompt.box == (10.0, 4.0, 30.0, 20.0) == mask_box(mask)
    assert len(prompt.points) == 3 and prompt.labels == (1, 1, 1)
    assert all(mask[int(y), int(x)] for x, y in prompt.points)
    assert len(set(prompt.points)) == 3
    assert follow(np.zeros((8, 8), np.uint8)).empty


def test_prompt_parsing():
    spec = parse_prompt(["3,4", "neg:5,6"], "1,2,10,12", None)
    assert spec.points == ((3.0, 4.0), (5.0, 6.0)) and spec.labels == (1, 0) and spec.box == (1, 2, 10, 12)
    assert parse_prompt([], None, "oracle-box").oracle_box
    for args in ((["3"], None, None), ([], "1,2,3", None), ([], None, None), (["neg:1,1"], None, None), (["1,1"], None, "oracle-box"), ([], None, "click")):
        with pytest.raises(UsageError):
            parse_prompt(*args)
