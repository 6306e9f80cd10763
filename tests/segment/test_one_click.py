"""One click per dataset (masklam.segment.marked): prompts checked before any model runs, a student that holds
on backgrounds it never saw, slides caught by appearance, the teacher on chosen splits, and the whole path
with the official MobileSAM weights."""

import importlib.util
import json

import numpy as np
import pytest

from masklam.data.dataset import open_dataset
from masklam.errors import UsageError
from masklam.segment.distill import DistillConfig, iou, predict, train_student
from masklam.segment.marked import Appearance
from masklam.segment.prompts import Prompt, PromptChain, PromptSpec, Track, mask_box, parse_prompt


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--point", "300,3"], "outside the frame.*source video"),
        (["--point=-3,3"], "outside the frame"),
        (["--point", "5,5", "--point", "neg:40,5"], "neg:40,5 is outside"),
        (["--box", "10,10,5,5"], "inverted or empty"),
        (["--box", "5,5,5,9"], "inverted or empty"),
        (["--box", "0,0,64,20"], "outside the frame"),
        (["--point", "3,3", "--on", "train/9/0"], "no episode 9"),
        (["--point", "3,3", "--on", "valid/0/0"], "no split 'valid'"),
        (["--point", "3,3", "--on", "train/0/99"], "has 11 frames"),
        (["--point", "3,3", "--on", "train/0"], "SPLIT/EPISODE/FRAME"),
        (["--on", "train/0/0"], "give the prompt with --point"),
    ],
)
def test_bad_prompts_are_one_line_before_any_model_runs(masklam_cli, dataset_factory, flags, message):
    data = dataset_factory()
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    # sam_vit_b has no weights here: had the model been loaded first, the error would be about its weights.
    done = masklam_cli("segment", str(data), "--model", "sam_vit_b", *flags, "--no-progress")
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "weights" not in line, line
    import re

    assert re.search(message, line), line
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before  # nothing written


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"7": {"points": [[3, 3]]}}, "no episode 7"),
        ({"test/3/0": {"points": [[3, 3]]}}, "split 'test' has no episode 3"),
        ({"train/0/0": {"box": [1, 1, 40, 9]}}, "outside the frame"),
        ({"train/0/0": {"points": [[3, 3]]}, "1": {"points": [[3, 3]]}}, "not both"),
    ],
)
def test_a_prompts_file_is_checked_against_the_dataset(masklam_cli, dataset_factory, tmp_path, entries, message):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(entries))
    done = masklam_cli("segment", str(dataset_factory()), "--model", "sam_vit_b", "--prompts", str(path), "--no-progress")
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_marks_are_parsed_from_the_command_line_and_a_file(tmp_path):
    spec = parse_prompt(["3,4", "neg:5,6"], "1,2,9,9", None, on="train/2/7")
    (mark,) = spec.marks
    assert spec.marked and (mark.split, mark.episode, mark.frame) == ("train", 2, 7)
    assert mark.prompt == Prompt(((3.0, 4.0), (5.0, 6.0)), (1, 0), (1.0, 2.0, 9.0, 9.0))
    path = tmp_path / "marks.json"
    path.write_text(json.dumps({"test/0/3": {"box": [1, 1, 5, 5]}, "train/1/0": {"points": [[2, 2]]}}))
    marks = parse_prompt([], None, None, str(path)).marks
    assert [m.key for m in marks] == ["test/0/3", "train/1/0"] and marks[0].prompt.box == (1.0, 1.0, 5.0, 5.0)
    assert parse_prompt([], None, None, str(path)).describe()["marks"]["train/1/0"]["points"] == [[2.0, 2.0]]


def scene(background: np.ndarray, rng: np.random.Generator, count: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """An orange ellipse (the agent: random place, size and angle) over ``background`` (size, size, 3)."""
    yy, xx = np.mgrid[:size, :size].astype(float)
    frames, masks = [], []
    for _ in range(count):
        cx, cy = rng.uniform(9, size - 9, 2)
        a, b, angle = rng.uniform(5, 8), rng.uniform(2, 4), rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        mask = ((u / a) ** 2 + (v / b) ** 2 <= 1).astype(np.uint8)
        frame = np.where(mask[..., None] > 0, np.array([230, 140, 40], np.uint8), background)
        frames.append(frame)
        masks.append(mask)
    return np.stack(frames), np.stack(masks)


@pytest.mark.slow  # two students of 150 steps at 32 px: ~50 s on one core (IoU 0.995 / 0.978 with composites, 0.742 unseen without)
def test_the_student_holds_on_a_background_it_never_saw():
    rng = np.random.default_rng(0)
    size = 32
    yy, xx = np.mgrid[:size, :size]
    stripes = np.where((yy // 4 % 2)[..., None] > 0, [40, 90, 160], [60, 150, 70]).astype(np.uint8)  # the training video
    unseen = np.where(((xx // 5 + yy // 5) % 2)[..., None] > 0, [200, 200, 200], [90, 40, 110]).astype(np.uint8)  # the test video
    train_frames, train_masks = scene(stripes, rng, 64)
    test_frames, test_masks = scene(unseen, rng, 32)
    scores = {}
    for composite in (0.0, 0.6):
        student = train_student(train_frames, train_masks, DistillConfig(10, steps=150, composite=composite), show_progress=False)
        scores[composite] = (iou(predict(student, train_frames), train_masks), iou(predict(student, test_frames), test_masks))
    assert scores[0.6][0] > 0.85 and scores[0.6][1] > 0.8, scores  # as good on the unseen background as on the seen one
    assert scores[0.6][1] > scores[0.0][1] + 0.1, scores  # and that is the composites' doing


def test_appearance_refuses_a_mask_that_slid_onto_the_background():
    rng = np.random.default_rng(1)
    yy, _ = np.mgrid[:32, :32]
    background = np.where((yy // 4 % 2)[..., None] > 0, [40, 90, 160], [60, 150, 70]).astype(np.uint8)
    frames, masks = scene(background, rng, 4)
    appearance = Appearance(frames[:2], masks[:2])
    assert not appearance.slid(frames[3], masks[3])
    beside = np.roll(masks[3], 12, axis=1) & (1 - masks[3])  # the same shape, moved off the agent
    assert beside.sum() > 10 and appearance.slid(frames[3], beside)


class Sliding(PromptChain):
    """A model whose followed masks slide onto the background beside the agent, same area, small step (neither
    a jump nor a drift); a prompt made from the student's proposal finds the agent."""

    def __init__(self, frames, masks):
        super().__init__(PromptSpec(box=(0, 0, 4, 4)))
        self.frames, self.masks, self.t = frames, masks, -1

    def encode(self, frames):
        return np.zeros((len(frames), 1))

    def decode(self, feature, prompt, frame_size):
        truth = self.masks[self.t]
        if prompt.box is not None and prompt.box == mask_box(truth):
            return truth  # the proposal's box: the agent
        return np.roll(truth, 2, axis=1) & (1 - truth) if self.t > 0 else truth  # followed: beside the agent

    def step(self, feature, track, frame_size, frame=None):
        self.t += 1
        return super().step(feature, track, frame_size, frame)


def test_a_slide_is_caught_by_appearance_and_reprompted_from_the_proposal():
    rng = np.random.default_rng(2)
    yy, _ = np.mgrid[:32, :32]
    background = np.where((yy // 4 % 2)[..., None] > 0, [40, 90, 160], [60, 150, 70]).astype(np.uint8)
    frames, masks = scene(background, rng, 6)
    masks = np.stack([np.roll(masks[0], t, axis=1) for t in range(6)])  # one agent moving right a pixel a frame
    frames = np.where(masks[..., None] > 0, np.array([230, 140, 40], np.uint8), background)
    chain = Sliding(frames, masks)
    track = Track(Prompt(box=mask_box(masks[0])), appearance=Appearance(frames[:1], masks[:1]), proposals=masks)
    out = chain.segment(frames, track)
    assert all(iou(o, m) == 1.0 for o, m in zip(out, masks)), [iou(o, m) for o, m in zip(out, masks)]
    assert chain.slides == 5 and chain.reprompts == 5 and chain.held == 0
    # Without the appearance check the same chain keeps the slid masks.
    chain = Sliding(frames, masks)
    out = chain.segment(frames, Track(Prompt(box=mask_box(masks[0])), proposals=masks))
    assert iou(out[-1], masks[-1]) < 0.5


def test_the_teacher_labels_the_chosen_splits_itself_resumably(masklam_cli, dataset_factory):
    data = dataset_factory()
    args = ("segment", str(data), "--model", "oracle", "--distill", "12", "--distill-steps", "5", "--teacher-on", "test", "--no-progress")
    done = masklam_cli(*args)
    assert done.returncode == 0, done.stderr
    dataset = open_dataset(data)
    assert dataset.info["mask_sources"]["oracle_student"]["teacher_on"] == ["test"]
    for record in dataset.records("test", mask_sources=("oracle", "oracle_student")):
        assert np.array_equal(record.masks["oracle_student"], record.masks["oracle"])  # the teacher's (here: the oracle's)
    train = [iou(r.masks["oracle_student"], r.masks["oracle"]) for r in dataset.records("train", mask_sources=("oracle", "oracle_student"))]
    assert min(train) < 1.0  # a 5-step student's, not the teacher's
    cached = sorted((data / "segment" / "oracle_student" / "teacher").glob("record-test-*.npy"))
    assert len(cached) == len(dataset.index("test"))
    bad = masklam_cli("segment", str(data), "--model", "oracle", "--distill", "12", "--teacher-on", "valid", "--no-progress")
    assert bad.returncode == 2 and "no split 'valid'" in bad.stderr


def test_teacher_on_needs_distill(dataset_factory):
    from masklam.segment.run import SegmentConfig

    with pytest.raises(UsageError, match="needs --distill"):
        SegmentConfig.from_options(str(dataset_factory()), "oracle", teacher_on="test")


# --- the whole path with the official weights -------------------------------------------------------------

# At this test's size (32 px, 12 teacher frames, a 200-step proposer and student) measured 0.62 on the train split
# (too many background pixels) and 0.88 on the test split (7 December; 0.64 and 0.95 with 18 frames and 300 steps,
# 1.7x the time); the floors leave room for other CPUs.
# At the recipes' size the student does far better (docs/segment.md, one click per dataset).
ONE_CLICK_IOU_FLOOR = {"train": 0.5, "test": 0.5}


@pytest.mark.slow  # MobileSAM encodes 22 frames at 1024 px: about 2 minutes on one core
@pytest.mark.usefixtures("pil_restored")
@pytest.mark.skipif(importlib.util.find_spec("ultralytics") is None, reason="MobileSAM's architecture is built by the ultralytics extra")
def test_one_click_with_the_official_mobile_sam_holds_on_both_splits(masklam_cli, tmp_path):
    from masklam.data.collect import CollectConfig, collect
    from masklam.envs.spec import EnvSpec, RenderSpec, distractor_preset
    from masklam.segment.compare import compare_sources
    from masklam.segment.weights import KNOWN, cache_dir

    if not (cache_dir() / KNOWN["mobile_sam"].filename).is_file():
        pytest.skip("no pretrained MobileSAM: run `masklam weights fetch mobile_sam` (scripts/test.sh does)")
    data = tmp_path / "data"
    env = EnvSpec("dmc:cheetah-run", RenderSpec(size=32), distractor_preset("low"), episode_steps=16)
    collect(CollectConfig(env=env, episodes=3, test_episodes=1, episodes_per_shard=2, seed=11), data, show_progress=False)
    # The user's one click: a box around the agent on one frame (read here off that frame's oracle mask, as a
    # person would draw it; no other frame sees the oracle).
    first = open_dataset(data).episode("train", 0).masks["oracle"][0]
    x0, y0, x1, y1 = mask_box(first)
    box = f"{max(0, x0 - 1):g},{max(0, y0 - 1):g},{min(32, x1 + 1):g},{min(32, y1 + 1):g}"
    args = ("segment", str(data), "--model", "mobile_sam", "--box", box, "--on", "train/0/0", "--distill", "12")
    done = masklam_cli(*args, "--distill-steps", "200", "--distill-test-frames", "2", "--no-progress")
    assert done.returncode == 0, done.stderr
    source = open_dataset(data).info["mask_sources"]["mobile_sam_student"]
    assert source["prompt"] == "marked" and "oracle" not in json.dumps(source["marks"])
    scores = compare_sources(data, "oracle", "mobile_sam_student")
    for split, floor in ONE_CLICK_IOU_FLOOR.items():
        assert scores["splits"][split]["iou"] >= floor, (split, scores["splits"])


def test_one_click_resumes_from_its_cache(masklam_cli, dataset_factory, small_checkpoint):
    """Plumbing with a tiny random-weight SAM: the marked frames' masks, the proposer and the teacher's runs are
    cached under one key and reused by a re-run (a killed job resumes); other marks start the cache afresh."""
    data = dataset_factory()
    base = ("segment", str(data), "--model", "sam_vit_b", "--checkpoint", str(small_checkpoint), "--distill", "12", "--distill-steps", "5", "--no-progress")
    done = masklam_cli(*base, "--point", "16,16", "--on", "train/1/2")
    assert done.returncode == 0, done.stderr
    assert "marked frames: 1" in done.stdout and "re-prompted" in done.stdout
    cache = data / "segment" / "sam_vit_b_student" / "teacher"
    kept = {p.name: p.stat().st_mtime_ns for p in cache.iterdir() if p.name != "marked.json"}  # a report, rewritten
    assert {"marked-000.npz", "proposer.pt", "key.json"} <= set(kept) and any(n.startswith("run-") for n in kept)
    marked = np.load(cache / "marked-000.npz")
    assert np.array_equal(marked["frames"][0], open_dataset(data).episode("train", 1, mask_sources=()).steps["rgb"][2])
    (data / "segment" / "sam_vit_b_student" / "student.pt").unlink()  # as if killed before the student was saved
    again = masklam_cli(*base, "--point", "16,16", "--on", "train/1/2", "--overwrite")
    assert again.returncode == 0, again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir() if p.name in kept} == kept  # nothing recomputed

    other = masklam_cli(*base, "--point", "10,12", "--on", "train/0/0", "--overwrite")
    assert other.returncode == 0, other.stderr
    assert (cache / "marked-000.npz").stat().st_mtime_ns != kept["marked-000.npz"]


def test_one_click_on_an_ingested_video_with_no_simulator(masklam_cli, small_checkpoint, tmp_path):
    """Videos nobody simulated (encoded with libx264, ingested back): one click on one frame masks every frame of
    both splits, with no oracle anywhere (tiny random-weight SAM: plumbing, not quality)."""
    import av

    videos = tmp_path / "videos"
    videos.mkdir()
    rng = np.random.default_rng(0)
    for clip in range(3):
        with av.open(str(videos / f"clip{clip}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=20, options={"crf": "10", "threads": "1"})
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
            for t in range(12):
                frame = np.full((32, 32, 3), rng.integers(0, 255, 3), np.uint8)
                frame[10:20, 8 + t // 2 : 16 + t // 2] = (230, 140, 40)
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())
    data = tmp_path / "data"
    assert masklam_cli("ingest", str(videos), "--out", str(data), "--size", "32", "--test-episodes", "1", "--no-progress").returncode == 0
    # Before any masks: look at the frames, and at the frame to click on with the click drawn.
    assert masklam_cli("view", str(data), "--out", str(tmp_path / "frames.png")).returncode == 0
    assert masklam_cli("view", str(data), "--out", str(tmp_path / "click.png"), "--at", "train/0/0", "--box", "7,9,17,21").returncode == 0
    args = ("--model", "sam_vit_b", "--checkpoint", str(small_checkpoint), "--distill", "12", "--distill-steps", "5", "--no-progress")
    done = masklam_cli("segment", str(data), "--box", "7,9,17,21", "--on", "train/0/0", *args)
    assert done.returncode == 0, done.stderr
    dataset = open_dataset(data)
    assert dataset.info["mask_sources"]["sam_vit_b_student"]["prompt"] == "marked"
    for split in ("train", "test"):
        for record in dataset.records(split, mask_sources=("sam_vit_b_student",)):
            assert record.masks["sam_vit_b_student"].shape == (record.meta.frames, 32, 32)
    oracle = masklam_cli("segment", str(data), "--prompt", "oracle-box", *args)  # what the recipes used: needs a simulator
    assert oracle.returncode == 2 and "simulator" in oracle.stderr and len(oracle.stderr.strip().splitlines()) == 1, oracle.stderr
