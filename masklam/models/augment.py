"""LAOM's random geometric augmentations (shift, rotation, perspective and compositions), in plain torch.

Every image independently picks one of ``compositions`` uniformly ("none" leaves it as is) and
draws its own parameters. Each primitive is a 3x3 homography on pixel coordinates, a composition
is their product, and the image is resampled once (bilinear, edge pixels replicated beyond the
border). LAOM's torchvision version instead resamples after each primitive, edge-pads and crops
in between, and shares one rotation / perspective draw across the images of a call.

Parameters are fractions of the image side, so 64 and 128 px images see the same relative
distortion; the defaults are LAOM's values at 64 px:

- ``shift``: integer translation per axis, uniform in [-p, p] pixels with p = round(shift * side)
  (LAOM: 14 px at 64 px).
- ``rotation``: angle uniform in [-rotation, rotation] degrees about the centre (LAOM: 90).
- ``perspective``: torchvision's RandomPerspective(distortion_scale=perspective) applied to the image
  padded by ``perspective_pad * side`` on every side, then cropped back (LAOM: 0.5 and 30 px at 64 px).
  Each corner of the padded canvas moves inward by up to ``perspective`` x its half side, per axis.

``enabled = false`` turns augmentation off (``--set model.augment.enabled=false``).

The channels of one image (its whole frame stack) share one transform. Parameters are drawn on the
CPU from the given ``torch.Generator``, whatever device the images are on, so a seed fixes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from masklam.configs import require

PRIMITIVES = ("shift", "rotate", "perspective")
COMPOSITIONS = ("none", "shift", "rotate", "perspective", "shift-rotate", "rotate-shift", "rotate-perspective", "perspective-rotate")


@dataclass(frozen=True)
class AugmentConfig:
    enabled: bool = True
    shift: float = 14 / 64
    rotation: float = 90.0
    perspective: float = 0.5
    perspective_pad: float = 30 / 64
    compositions: tuple[str, ...] = COMPOSITIONS
    seed: int = 0  # of the generator the model that owns the augmentation creates

    def __post_init__(self) -> None:
        require(0 <= self.shift <= 0.5, "shift", self.shift, "a fraction of the image side in [0, 0.5]")
        require(0 <= self.rotation <= 180, "rotation", self.rotation, "degrees in [0, 180]")
        require(0 <= self.perspective <= 1, "perspective", self.perspective, "a distortion scale in [0, 1]")
        require(0 <= self.perspective_pad <= 1, "perspective_pad", self.perspective_pad, "a fraction of the image side in [0, 1]")
        require(len(self.compositions) > 0, "compositions", self.compositions, f"list at least one of {', '.join(COMPOSITIONS)}")
        for composition in self.compositions:
            steps = composition.split("-")
            if composition != "none" and not set(steps) <= set(PRIMITIVES):
                raise ValueError(f"unknown augmentation {composition!r}: compose {', '.join(PRIMITIVES)} with '-', or 'none'")


def homography(source: torch.Tensor, destination: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) maps taking the 4 points ``source`` (N, 4, 2) to ``destination`` (N, 4, 2)."""
    x, y = source.double().unbind(-1)
    u, v = destination.double().unbind(-1)
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    rows = torch.cat(
        [
            torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], -1),
            torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], -1),
        ],
        1,
    )
    solution = torch.linalg.solve(rows, torch.cat([u, v], 1))
    return torch.cat([solution, torch.ones_like(solution[:, :1])], 1).view(-1, 3, 3).float()


def sampling_maps(n: int, height: int, width: int, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """(n, 3, 3) maps from output to input pixel coordinates (origin at the image centre)."""
    maps = torch.eye(3).repeat(len(PRIMITIVES), n, 1, 1)
    shift, rotate, perspective = maps

    limit = torch.tensor([round(config.shift * width), round(config.shift * height)])
    shift[:, :2, 2] = (torch.rand(n, 2, generator=generator) * (2 * limit + 1)).floor() - limit

    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(config.rotation)
    cos, sin = angle.cos(), angle.sin()
    rotate[:, 0, 0], rotate[:, 0, 1], rotate[:, 1, 0], rotate[:, 1, 1] = cos, -sin, sin, cos

    # torchvision's RandomPerspective: the padded canvas's corners move inward; each output pixel at
    # a moved corner shows what was at the corner.
    half = torch.tensor([width, height]) * (0.5 + config.perspective_pad)
    corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]) * half
    inward = torch.rand(n, 4, 2, generator=generator) * config.perspective * half
    perspective[:] = homography(corners - corners.sign() * inward, corners.expand(n, 4, 2))

    choice = torch.randint(len(config.compositions), (n,), generator=generator)
    candidates = []
    for composition in config.compositions:
        # Applying A then B samples the input at A_map(B_map(p)).
        total = torch.eye(3).expand(n, 3, 3)
        for step in composition.split("-"):
            if step != "none":
                total = total @ maps[PRIMITIVES.index(step)]
        candidates.append(total)
    return torch.stack(candidates)[choice, torch.arange(n)]


def warp(images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Resample (N, C, H, W) images at ``maps`` (N, 3, 3) applied to each output pixel's centre."""
    n, _, height, width = images.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, device=images.device) + 0.5 - height / 2,
        torch.arange(width, device=images.device) + 0.5 - width / 2,
        indexing="ij",
    )
    points = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, -1, 3)
    mapped = points @ maps.to(images.device).transpose(1, 2)
    scale = torch.tensor([width / 2, height / 2], device=images.device)
    grid = (mapped[..., :2] / mapped[..., 2:] / scale).view(n, height, width, 2)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="border", align_corners=False)


def augment(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """A random composition per image of (N, C, H, W) float images; same shape and dtype."""
    n, _, height, width = images.shape
    return warp(images, sampling_maps(n, height, width, config, generator))
