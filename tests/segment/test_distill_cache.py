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
    config = DistillConfig(20, steps=2)
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
