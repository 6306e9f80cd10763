"""Prompts without a simulator (per-episode files) and the chain's re-prompting, with a model whose masks are
scripted: what the chain decides from a given mask is exactly what is tested."""

import json

import numpy as np
import pytest

from masklam.errors import UsageError
from masklam.segment.prompts import Prompt, PromptChain, PromptSpec, Track, parse_prompt


def square(x: int, y: int, side: int = 8, size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[y : y + side, x : x + side] = 1
    return mask


class Scripted(PromptChain):
    """Returns the scripted mask of each frame for a followed prompt, and ``fresh`` for the episode's first prompt."""

    def __init__(self, spec, followed, fresh):
        super().__init__(spec)
        self.followed, self.fresh, self.t, self.first_prompts = followed, fresh, -1, []

    def encode(self, frames):
        return [np.zeros(1) for _ in frames]

    def decode(self, feature, prompt, frame_size):
        if prompt == self.first:
            self.first_prompts.append(self.t)
            return self.fresh[self.t]
        return self.followed[self.t]

    def step(self, feature, track, frame_size, frame=None):
        self.t += 1
        self.first = track.first
        return super().step(feature, track, frame_size, frame)


FIRST = Prompt(box=(10.0, 10.0, 18.0, 18.0))


def run(followed, fresh, reprompt=True):
    chain = Scripted(PromptSpec(box=FIRST.box, reprompt=reprompt), followed, fresh)
    masks = chain.segment(np.zeros((len(followed), 64, 64, 3), np.uint8), Track(FIRST))
    return masks, chain


def test_a_jump_in_area_is_reprompted_with_the_first_prompt():
    agent = [square(10 + t, 10) for t in range(4)]
    ground = np.zeros((64, 64), np.uint8)
    ground[40:] = 1  # the chain slid onto the floor: 24 times the agent's area
    masks, chain = run([agent[0], agent[1], ground, agent[3]], agent)
    assert chain.first_prompts == [0, 2] and chain.reprompts == 1 and chain.held == 0
    assert np.array_equal(masks[2], agent[2])


def test_a_jump_in_position_is_reprompted_and_a_failed_reprompt_keeps_the_mask_before():
    agent = [square(10, 10) for _ in range(3)]
    far = square(50, 50)  # same area, centroid 40 px away in a 64 px frame
    masks, chain = run([agent[0], agent[1], far], [agent[0], agent[1], square(12, 10)])
    assert chain.reprompts == 1 and chain.held == 0 and np.array_equal(masks[2], square(12, 10))
    # The first prompt finds nothing there either: the mask before is kept.
    masks, chain = run([agent[0], agent[1], far], [agent[0], agent[1], np.zeros((64, 64), np.uint8)])
    assert chain.reprompts == 1 and chain.held == 1 and np.array_equal(masks[2], agent[1])


def test_slow_drift_from_the_first_mask_is_caught():
    # Grows ~1.5x per frame: never a jump from the frame before, but 3.5x the first mask by frame 3.
    sides = [8, 10, 12, 15]
    followed = [square(10, 10, s) for s in sides]
    masks, chain = run(followed, [square(10, 10, 8)] * 4)
    assert chain.first_prompts == [0, 3] and np.array_equal(masks[3], square(10, 10, 8))


def test_an_empty_mask_is_reprompted_and_reprompting_can_be_turned_off():
    agent = [square(10, 10) for _ in range(3)]
    empty = np.zeros((64, 64), np.uint8)
    assert run([agent[0], empty, agent[2]], agent)[1].reprompts == 1
    masks, chain = run([agent[0], square(30, 30, 30), agent[2]], agent, reprompt=False)
    assert chain.reprompts == 0 and masks[1].sum() == 900


def test_prompts_files(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"0": {"box": [1, 2, 3, 4]}, "2": {"points": [[5, 6], [7, 8]], "labels": [1, 0]}}))
    spec = parse_prompt([], None, None, str(path))
    assert spec.first(None, 0) == Prompt(box=(1.0, 2.0, 3.0, 4.0))
    assert spec.first(None, 2) == Prompt(((5.0, 6.0), (7.0, 8.0)), (1, 0))
    with pytest.raises(UsageError, match="no prompt for episode 1"):
        spec.first(None, 1)
    assert spec.describe()["prompts_file"] == "p.json"

    boxes = tmp_path / "b.csv"
    boxes.write_text("episode,x0,y0,x1,y1\n3,1,1,9,9\n*,0,0,5,5\n")
    spec = parse_prompt([], None, None, str(boxes))
    assert spec.first(None, 3).box == (1.0, 1.0, 9.0, 9.0) and spec.first(None, 7).box == (0.0, 0.0, 5.0, 5.0)
    points = tmp_path / "p.csv"
    points.write_text("episode,x,y,label\n0,5,5,1\n0,1,1,0\n")
    assert parse_prompt([], None, None, str(points)).first(None, 0) == Prompt(((5.0, 5.0), (1.0, 1.0)), (1, 0))


@pytest.mark.parametrize(
    "name, text",
    [
        ("bad.json", "{not json"),
        ("neg.json", json.dumps({"0": {"points": [[1, 1]], "labels": [0]}})),
        ("short.json", json.dumps({"0": {"box": [1, 2, 3]}})),
        ("word.json", json.dumps({"first": {"box": [1, 2, 3, 4]}})),
        ("empty.json", "{}"),
        ("cols.csv", "episode,a,b\n0,1,2\n"),
        ("prompts.txt", "0 1 2 3 4"),
    ],
)
def test_bad_prompts_files_are_usage_errors(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(UsageError):
        parse_prompt([], None, None, str(tmp_path / name))


def test_one_kind_of_prompt_at_a_time(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"*": {"box": [1, 2, 3, 4]}}))
    for args in ((["1,1"], None, None, str(tmp_path / "p.json")), ([], None, "auto", str(tmp_path / "p.json")), (["1,1"], None, "auto", None)):
        with pytest.raises(UsageError):
            parse_prompt(*args)
    assert parse_prompt([], None, "auto").auto
    with pytest.raises(UsageError, match="no such file"):
        parse_prompt([], None, None, str(tmp_path / "missing.json"))
