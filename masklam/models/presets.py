"""Model sizes as data: the papers' sizes and CPU-sized ones, for every method.

- ``paper``: 64 px (Distracting Control Suite; pass image_size=128 for Distracting Meta-World),
  IMPALA channels (16, 32, 32) x 4. The multiplier 4 is LAPO's (``idm_impala_scale`` and
  ``policy_impala_scale`` in its config); MaskLAM's and LAOM's papers say "IMPALA" without a width,
  LAOM's released configs use 6 (``encoder_scale``). Latents: 128 (MaskLAM, LAPO as MaskLAM runs it),
  8192 (LAOM). With the trainers' batch 128 and 100,000 steps a ``paper`` LAM run is about a ninth of
  the FLOPs of LAOM's runs, a sixth for laom-labels (docs/training.md, "What each preset costs").
- ``small``: 64 px, multiplier 1, smaller LAOM heads and latent: minutes per thousand steps on 2 cores.
- ``tiny``: 32 px, channels (8, 16, 16): smoke runs and tests.

Methods: lapo (full-frame loss, no masks), lapo-vq (plus the original LAPO's VQ bottleneck),
masklam (masked loss, masks as input channels: the paper's default), laom, laom-labels.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from masklam.configs import build
from masklam.methods import METHOD_OPTIONS
from masklam.models.lam import LAOM, LAOMConfig, LAOMLabels, LAOMLabelsConfig, LatentPolicyConfig, PixelLAM, PixelLAMConfig

LAMConfig = PixelLAMConfig | LAOMConfig

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"image_size": 32, "channels": (8, 16, 16), "multiplier": 1},
    "small": {"image_size": 64, "channels": (16, 32, 32), "multiplier": 1},
    "paper": {"image_size": 64, "channels": (16, 32, 32), "multiplier": 4},
}
LAOM_HEADS: dict[str, dict[str, Any]] = {
    "tiny": {"latent_dim": 256, "hidden_dim": 128},
    "small": {"latent_dim": 1024, "hidden_dim": 256},
    "paper": {"latent_dim": 8192, "hidden_dim": 512},
}
# Each method's options are plain data in masklam/methods.py (recipes and reports read them without torch).
METHODS: dict[str, tuple[type[LAMConfig], dict[str, Any]]] = {
    "lapo": (PixelLAMConfig, METHOD_OPTIONS["lapo"]),
    "lapo-vq": (PixelLAMConfig, METHOD_OPTIONS["lapo-vq"]),
    "masklam": (PixelLAMConfig, METHOD_OPTIONS["masklam"]),
    "laom": (LAOMConfig, METHOD_OPTIONS["laom"]),
    "laom-labels": (LAOMLabelsConfig, METHOD_OPTIONS["laom-labels"]),
}


def check(preset: str, method: str | None = None) -> None:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    if method is not None and method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")


def lam_config(method: str, preset: str = "paper", image_size: int | None = None, /, **overrides: Any) -> LAMConfig:
    """The LAM configuration of ``method`` at ``preset`` sizes; ``overrides`` set any other field, as plain data
    (``augment={"enabled": False}``) or typed values. Unknown fields, wrong types and invalid values are
    SettingErrors (UsageErrors and ValueErrors) naming ``model.<field>``."""
    check(preset, method)
    cls, options = METHODS[method]
    sizes = PRESETS[preset] | (LAOM_HEADS[preset] if issubclass(cls, LAOMConfig) else {})
    size = {"image_size": image_size} if image_size is not None else {}
    return build(cls, sizes | options | size | overrides, "model")


def policy_config(preset: str, lam: LAMConfig, **overrides: Any) -> LatentPolicyConfig:
    """The latent policy for a trained LAM: the preset's encoder, the LAM's latent, image and stack sizes."""
    check(preset)
    shared = {"latent_dim": lam.latent_dim, "image_size": lam.image_size, "frame_stack": lam.frame_stack}
    return LatentPolicyConfig(**PRESETS[preset] | shared | overrides)


def build_lam(config: LAMConfig, action_dim: int | None = None) -> nn.Module:
    """The model a LAM configuration describes (LAOM-Labels needs the action size)."""
    if isinstance(config, LAOMLabelsConfig):
        if action_dim is None:
            raise ValueError("LAOM-Labels needs action_dim")
        return LAOMLabels(config, action_dim)
    return LAOM(config) if isinstance(config, LAOMConfig) else PixelLAM(config)
