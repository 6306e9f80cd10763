"""The names of the evaluation's output files, without torch: the report reads them on a machine with no torch."""

from __future__ import annotations

ACTION_SCORES = "action-scores.json"  # `masklam score-actions` (masklam/eval/offline.py)


def probe_file(at: int | None = None) -> str:
    """probe.json of the final model; probe-step<N>.json of the one kept at step N (`train lam --probe-at`)."""
    return "probe.json" if at is None else f"probe-step{at}.json"
