"""The names of the evaluation's output files, without torch: the report reads them on a machine with no torch."""

from __future__ import annotations

ACTION_SCORES = "action-scores.json"  # `masklam score-actions` (masklam/eval/offline.py)
ACTION_SCORE_LINKS = ("decoder_on_lam_latent", "latent_bc", "decoded_policy", "bc_actions")  # its scores per split


def probe_file(at: int | None = None) -> str:
    """probe.json of the final model; probe-step<N>.json of the one kept at step N (`train lam --probe-at`)."""
    return "probe.json" if at is None else f"probe-step{at}.json"
