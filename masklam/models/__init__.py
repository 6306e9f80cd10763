"""Latent action models (LAPO, MaskLAM, LAOM, LAOM-Labels), the latent policy and action decoder, and their sizes."""

from masklam.models.augment import AugmentConfig, augment
from masklam.models.impala import ImpalaDecoder, ImpalaEncoder
from masklam.models.lam import (
    IDM,
    LAOM,
    ActionDecoder,
    ActionDecoderConfig,
    LAOMConfig,
    LAOMLabels,
    LAOMLabelsConfig,
    LatentPolicy,
    LatentPolicyConfig,
    PixelFDM,
    PixelLAM,
    PixelLAMConfig,
    masked_mse,
    preprocess,
)
from masklam.models.presets import METHODS, PRESETS, build_lam, lam_config, policy_config
from masklam.models.vq import VectorQuantizer

__all__ = [
    "IDM",
    "LAOM",
    "METHODS",
    "PRESETS",
    "ActionDecoder",
    "ActionDecoderConfig",
    "AugmentConfig",
    "ImpalaDecoder",
    "ImpalaEncoder",
    "LAOMConfig",
    "LAOMLabels",
    "LAOMLabelsConfig",
    "LatentPolicy",
    "LatentPolicyConfig",
    "PixelFDM",
    "PixelLAM",
    "PixelLAMConfig",
    "VectorQuantizer",
    "augment",
    "build_lam",
    "lam_config",
    "masked_mse",
    "policy_config",
    "preprocess",
]
