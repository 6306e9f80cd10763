"""The teacher phase of --distill is cached per run: a killed job resumes, another teacher starts afresh."""

import numpy as np

from masklam.data.schema import ORACLE
from masklam.segment.distill import DistillConfig, distill


def counting_oracle(calls: list):
    def teacher(records):
        for record in records:
            calls.append(record.meta.episode)
            yield record.masks[ORACLE]

    return teacher


def test_teacher_labels_are_cached_per_run_and_reused(dataset_factory):
    data = dataset_factory()
    config = DistillConfig(20, steps=2, test_frames=0)
    calls: list = []
    _, report = distill(data, "taught", counting_oracle(calls), (ORACLE,), config, show_progress=False, teacher_key={"kind": "oracle"})
    cache = data / "segment" / "taught" / "teacher"
    runs = sorted(cache.glob("run-*.npy"))
    assert len(calls) == len(runs) == 3 and report["teacher_frames"] == 3 * 7
    assert report["teacher_iou_vs_oracle"] == 1.0 and 0.0 <= report["student_iou_vs_oracle"] <= 1.0

    # Killed after the first run: the student was never saved, one label is gone; only that run is labelled again.
    (data / "segment" / "taught" / "student.pt").unlink()
    runs[1].unlink()
    calls.clear()
    distill(data, "taught", counting_oracle(calls), (ORACLE,), config, show_progress=False, teacher_key={"kind": "oracle"})
    assert calls == [1]

    # Another teacher: the cache is not its labels.
    (data / "segment" / "taught" / "student.pt").unlink()
    calls.clear()
    distill(data, "taught", counting_oracle(calls), (ORACLE,), config, show_progress=False, teacher_key={"kind": "mobile_sam"})
    assert len(calls) == 3
    assert np.load(runs[0]).shape == (7, 32, 32)


def test_the_student_is_scored_on_test_frames_it_never_saw(dataset_factory):
    data = dataset_factory()
    calls: list = []
    _, report = distill(data, "taught", counting_oracle(calls), (ORACLE,), DistillConfig(20, steps=2, test_frames=6), show_progress=False)
    sample = report["test_sample"]
    assert sample["frames"] == 6 and sample["teacher_iou_vs_oracle"] == 1.0 and 0.0 <= sample["student_iou_vs_teacher"] <= 1.0
    assert sample["student_iou_vs_teacher"] == sample["student_iou_vs_oracle"]  # the teacher here is the oracle
    assert len(list((data / "segment" / "taught" / "teacher").glob("test-run-*.npy"))) == 1  # the test split's one episode
