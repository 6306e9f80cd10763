#!/usr/bin/env bash
# Install masklam, collect a small distracted dataset and draw it (the README's main job).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check torch==2.13.0 -e .
export MUJOCO_GL="${MUJOCO_GL:-egl}"
out="${1:-data/quickstart-cheetah-run}"
masklam collect --env dmc:cheetah-run --distractors low --episodes 8 --test-episodes 2 --steps 200 --workers 2 --out "$out"
masklam info "$out"
masklam view "$out" --out "$out/view.png"
