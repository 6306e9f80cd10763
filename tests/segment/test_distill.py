import json

import pytest

from masklam.data.dataset import open_dataset
from masklam.segment.distill import iou


@pytest.fixture(scope="module")
def distill_data(tmp_path_factory):
    from masklam.data.collect import CollectConfig, collect
    from masklam.envs.spec import EnvSpec, RenderSpec, distractor_preset

    root = tmp_path_factory.mktemp("distill") / "data"
    env = EnvSpec("dmc:cheetah-run", RenderSpec(size=32), distractor_preset("low"), episode_steps=60)
    collect(CollectConfig(env=env, episodes=5, test_episodes=1, episodes_per_shard=2, seed=5), root, show_progress=False)
    return root


@pytest.mark.slow
def test_a_student_distilled_from_the_oracle_matches_it(masklam_cli, distill_data):
    done = masklam_cli("segment", str(distill_data), "--model", "oracle", "--distill", "200", "--distill-steps", "300", "--no-progress")
    assert done.returncode == 0, done.stderr
    report = json.loads((distill_data / "segment" / "oracle_student" / "distill.json").read_text())
    assert report["student_iou_vs_teacher"] >= 0.8, report
    assert report["teacher_frames"] >= 200 and report["held_out_frames"] > 0 and "IoU" in done.stdout
    dataset = open_dataset(distill_data)
    assert dataset.info["mask_sources"]["oracle_student"]["student"] == report
    # Every frame of both splits labelled by the student, close to the oracle on the test episode too.
    test = next(dataset.records("test", mask_sources=("oracle", "oracle_student")))
    assert iou(test.masks["oracle_student"], test.masks["oracle"]) >= 0.7


@pytest.mark.parametrize("episodes, size, says", [(1, 16, "at least 2 train records"), (2, 18, "divisible by 4")])
def test_distill_refuses_pointless_work_before_any_teacher_runs(masklam_cli, tmp_path, episodes, size, says):
    """Checked from the metadata: no teacher labels a frame, no teacher cache is left."""
    data = tmp_path / "data"
    collect = ["collect", "--env", "dmc:cheetah-run", "--steps", "6", "--size", str(size), "--episodes", str(episodes), "--test-episodes", "0"]
    assert masklam_cli(*collect, "--out", str(data), "--no-progress").returncode == 0
    result = masklam_cli("segment", str(data), "--model", "oracle", "--distill", "10", "--no-progress")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and says in lines[0], result.stderr
    assert not (data / "segment").exists()
