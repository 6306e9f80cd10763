"""IMPALA convolutional encoder (Espeholt et al. 2018) and the decoder that mirrors it.

Encoder: per stage, conv3x3 -> max-pool 3x3 stride 2 -> 2 residual blocks; three stages halve the
image three times, so H and W must be divisible by 8 (32 -> 4, 64 -> 8, 128 -> 16). A final ReLU
follows the residual stack (as in LAPO), then optionally flatten -> linear to ``out_dim``.

Decoder: the stages in reverse order, each a stride-2 transposed conv (kernel 2: non-overlapping,
so no checkerboard artefacts) -> 2 residual blocks, then ReLU -> conv3x3 to the output channels.
The decoder returns raw values; callers choose the output squashing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

DOWNSAMPLING = 8  # three stride-2 stages


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


def stage_channels(channels: Sequence[int], multiplier: int) -> list[int]:
    return [c * multiplier for c in channels]


def bottleneck_shape(channels: Sequence[int], multiplier: int, image_size: int) -> tuple[int, int, int]:
    """(C, h, w) of the encoder's feature map for a square image of side ``image_size``."""
    if image_size % DOWNSAMPLING:
        raise ValueError(f"image size {image_size} is not divisible by {DOWNSAMPLING}")
    side = image_size // DOWNSAMPLING
    return stage_channels(channels, multiplier)[-1], side, side


class ImpalaEncoder(nn.Module):
    """(B, in_channels, H, W) -> feature map (B, C, H/8, W/8), or (B, out_dim) when ``out_dim`` is set.

    ``image_size`` (the side of a square image) is needed only to size the final linear layer.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int] = (16, 32, 32),
        multiplier: int = 1,
        out_dim: int | None = None,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"the IMPALA encoder has 3 stages, got channels {tuple(channels)}")
        layers: list[nn.Module] = []
        width = in_channels
        for out in stage_channels(channels, multiplier):
            layers += [
                nn.Conv2d(width, out, 3, padding=1),
                nn.MaxPool2d(3, stride=2, padding=1),
                ResidualBlock(out),
                ResidualBlock(out),
            ]
            width = out
        self.stack = nn.Sequential(*layers, nn.ReLU())
        self.out_channels = width
        self.head: nn.Linear | None = None
        if out_dim is not None:
            if image_size is None:
                raise ValueError("ImpalaEncoder needs image_size to size its output layer")
            self.head = nn.Linear(math.prod(bottleneck_shape(channels, multiplier, image_size)), out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stack(x)
        return features if self.head is None else self.head(features.flatten(1))


class ImpalaDecoder(nn.Module):
    """(B, in_channels, h, w) -> (B, out_channels, 8h, 8w), mirroring ImpalaEncoder's stages."""

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int] = (16, 32, 32), multiplier: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for out in reversed(stage_channels(channels, multiplier)):
            layers += [nn.ConvTranspose2d(width, out, 2, stride=2), ResidualBlock(out), ResidualBlock(out)]
            width = out
        self.stack = nn.Sequential(*layers, nn.ReLU(), nn.Conv2d(width, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack(x)
