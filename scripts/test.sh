#!/usr/bin/env bash
# Install masklam with its test tools, then run the test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
# The sam and ultralytics extras pin torch 2.14.1 + torchvision 0.29.1 (both need torchvision); name them too.
python3 -m pip install --quiet --disable-pip-version-check -e ".[test,hub,sam,ultralytics]" torch==2.14.1 torchvision==0.29.1
python3 -m masklam.cli weights fetch mobile_sam || echo "MobileSAM weights not fetched: the real-weights test will skip"  # pretrained weights for tests/segment/test_mobile_sam.py
export MUJOCO_GL="${MUJOCO_GL:-egl}"
status=0
python3 -m pytest -q "$@" || status=$?
# pytest exits 5 when it collected no tests (e.g. a -k filter that matches nothing): say so, do not fail.
if [ "$status" -eq 5 ]; then echo "0 passed, 0 failed: pytest collected no tests"; exit 0; fi
exit "$status"
