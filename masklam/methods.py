"""The LAM methods by name and what sets each apart, as plain data: recipes, run folders and reports ask it
without importing torch (the models' classes are paired with these options in masklam/models/presets.py).

Methods: lapo (full-frame loss, no masks), lapo-vq (plus the original LAPO's VQ bottleneck), masklam (masked
loss, masks as input channels: the paper's default), laom, laom-labels.
"""

from __future__ import annotations

from typing import Any

METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "lapo": {"loss": "full", "mask_input": "none"},
    "lapo-vq": {"loss": "full", "mask_input": "none", "vq": True},
    "masklam": {"loss": "masked", "mask_input": "channel"},
    "laom": {},
    "laom-labels": {},
}


def uses_masks(method: str, model: dict[str, Any]) -> bool:
    """Whether a method, with these model settings (--set model.*), reads agent masks: a masked loss or masks as input."""
    options = METHOD_OPTIONS[method]
    return options.get("loss") == "masked" or model.get("loss") == "masked" or model.get("mask_input", options.get("mask_input", "none")) != "none"
