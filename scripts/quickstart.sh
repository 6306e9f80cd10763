#!/usr/bin/env bash
# Install masklam and run the quickstart recipe (the README's main job): collect a tiny distracted
# cheetah-run dataset, train LAPO, LAOM, LAOM-Labels and MaskLAM on it, probe, decode, roll out, report.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check torch==2.13.0 -e .
export MUJOCO_GL="${MUJOCO_GL:-egl}"
masklam run quickstart --out "${1:-runs/quickstart}" --workers 2
