#!/usr/bin/env bash
# Make .venv-lerobot/: lerobot 0.4.4 over this Python's packages, for the tests that run LeRobot's own code
# (tests/lerobot_check.py). lerobot's pins (torch<2.11, huggingface-hub<0.36, datasets<5, av<16) clash with
# masklam's test extras, so it goes in --no-deps over them: it needs only accelerate and safetensors more to
# load and write datasets. Idempotent: a stamp file holds the pins; a venv that has them is left as it is.
# scripts/test.sh runs it; a failure (e.g. no network) is reported and the LeRobot tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-lerobot
pins="lerobot==0.4.4 accelerate==1.16.0 safetensors==0.8.0"
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/masklam-pins" 2>/dev/null)" = "$pins" ]; then
    exit 0
fi
rm -rf "$venv"
log=$(mktemp)
# shellcheck disable=SC2086  # the pins are separate words
if python3 -m venv --without-pip --system-site-packages "$venv" >"$log" 2>&1 &&
    python3 -m pip --python "$venv/bin/python" install --quiet --disable-pip-version-check --no-deps $pins >>"$log" 2>&1; then
    echo "$pins" >"$venv/masklam-pins"
    rm -f "$log"
else
    cat "$log" >&2
    rm -rf "$venv" "$log"
    echo "$venv not made (see above): the tests that run LeRobot's own code will skip" >&2
    exit 1
fi
