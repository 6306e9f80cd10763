#!/usr/bin/env bash
# Install masklam with its test tools, lint, then run the test suite (the README's test command).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"` (the fast inner loop).
set -euo pipefail
cd "$(dirname "$0")/.."
# The sam and ultralytics extras pin torch 2.14.1 + torchvision 0.29.1 (both need torchvision); name them too.
python3 -m pip install --quiet --disable-pip-version-check -e ".[test,hub,sam,ultralytics]" torch==2.14.1 torchvision==0.29.1
# LeRobot's own code runs in .venv-lerobot/, lerobot over these packages (5 s once, 15 MB; see docs/install.md)
bash scripts/lerobot_venv.sh || true
python3 -m masklam.cli weights fetch mobile_sam || echo "MobileSAM weights not fetched: the real-weights test will skip"  # pretrained weights for tests/segment/test_mobile_sam.py
export MUJOCO_GL="${MUJOCO_GL:-egl}"
lint=0
python3 -m ruff check . || lint=$?  # reported, and fails the run, after the tests
python3 -m ruff format --check . || lint=$?
status=0
# One pytest worker per core, at most 4 (pytest-xdist; each worker holds torch and a simulator: ~1-2 GB), each on
# one thread: torch's default threads in two processes on the same cores wait on each other (10-50x slower).
# --dist worksteal: idle workers take queued tests. --durations=25: the slowest tests stay visible in every log.
# Extra arguments (e.g. -n 0 for one process) come last and win.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MASKLAM_THREADS="${MASKLAM_THREADS:-1}"
workers=$(python3 -c "import os; print(min(4, len(os.sched_getaffinity(0))))")
python3 -m pytest -q --durations=25 -n "$workers" --dist worksteal "$@" || status=$?
# pytest exits 5 when it collected no tests (e.g. a -k filter that matches nothing): say so, do not fail.
if [ "$status" -eq 5 ]; then echo "0 passed, 0 failed: pytest collected no tests"; status=0; fi
if [ "$lint" -ne 0 ]; then echo "ruff failed (see above): ruff check --fix . mends import order and other safe fixes, ruff format . the layout"; fi
[ "$status" -ne 0 ] && exit "$status"
exit "$lint"
