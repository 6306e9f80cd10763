"""Latent action models and the two models trained after them, as plain torch modules.

- PixelLAM: an IDM and a pixel-space FDM. LAPO with the full-frame loss, MaskLAM with the loss
  restricted to the agent's pixels (``masked_mse``).
- LAOM: a shared encoder, latent IDM and FDM heads, an EMA target encoder, augmentations.
- LAOMLabels: LAOM plus a linear head from the latent to the true action, trained on a separate
  labelled batch (``labelled_obs``, ``labelled_future``, ``labelled_action``) each step.
- LatentPolicy (latent behaviour cloning) and ActionDecoder (latent -> action).

Batches are dicts of tensors as the loader gives them (frames uint8, channels last):
``obs`` (B, S, H, W, 3) the stack ending at t, ``future`` (B, S, H, W, 3) the stack ending at t+k,
``next`` (B, H, W, 3) = o_{t+1}, ``obs_mask`` / ``future_mask`` (B, S, H, W) and ``next_mask``
(B, H, W) uint8 0/1, ``action`` (B, A) float, ``labelled`` (B,) bool. Datasets store NaN actions for
unlabelled episodes and readers drop them; the loader fills zeros for those rows (``labelled`` False), so a
model must select labelled rows (``row_mse``), never trust ``action`` alone.
The IDM's offset k is the loader's business (LAPO: k = 1; LAOM and MaskLAM: k ~ U{1..10}).

Models with a latent have ``latent(batch)`` -> (B, latent_dim), computed without gradients or
augmentation (for probes and behaviour-cloning targets), and ``loss(batch)`` -> (loss, metrics),
the metrics being the detached 0-d tensors of ``forward``'s output, so logging needs no sync.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from masklam.configs import require
from masklam.models.augment import AugmentConfig, augment
from masklam.models.impala import DOWNSAMPLING, ImpalaDecoder, ImpalaEncoder, bottleneck_shape
from masklam.models.vq import VectorQuantizer

Batch = Mapping[str, torch.Tensor]
MaskInput = Literal["none", "channel", "pixels"]
MASK_INPUTS = ("none", "channel", "pixels")
LOSSES = ("full", "masked")
RGB = 3


# --- inputs and losses ------------------------------------------------------------------------
def preprocess(frames: torch.Tensor, scale: float) -> torch.Tensor:
    """uint8 frames -> floats in [-scale, scale], channels first, a stack folded into channels.

    (B, S, H, W, 3) -> (B, 3S, H, W), frame by frame (frame 0's RGB first); (B, H, W, 3) -> (B, 3, H, W).
    MaskLAM uses scale 0.5, LAOM 1.
    """
    if frames.dim() == 5:  # the stack folded into the last axis, on the bytes: 4x less to move than floats
        batch, stack, height, width, _ = frames.shape
        frames = frames.permute(0, 2, 3, 1, 4).reshape(batch, height, width, stack * RGB)
    # Pixels stay last in memory: the view is channels_last, as the convolutions take it (a copy to that layout
    # in front of every IDM and FDM cost 10 % of a tiny LAM step on this CPU).
    return (frames.float() * (2 * scale / 255) - scale).permute(0, 3, 1, 2)


def model_input(frames: torch.Tensor, masks: torch.Tensor | None, scale: float, mask_input: MaskInput) -> torch.Tensor:
    """A frame stack as network input, its agent masks (B, S, H, W) ignored ("none"), appended as S
    extra channels of 0/1 ("channel"), or multiplied into the pixels ("pixels": everything but the
    agent becomes 0, mid-grey)."""
    x = preprocess(frames, scale)
    if mask_input == "none":
        return x
    m = masks.to(x.dtype).contiguous(memory_format=torch.channels_last)  # as x: torch.cat then keeps that layout
    return torch.cat([x, m], 1) if mask_input == "channel" else x * m.repeat_interleave(RGB, dim=1)


def stack_channels(frame_stack: int, mask_input: MaskInput) -> int:
    return frame_stack * (RGB + (mask_input == "channel"))


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MaskLAM's L_rec = sum_{b,c,h,w} M (prediction - target)^2 / sum_{b,h,w} M, for (B, C, H, W)
    images and a binary (B, H, W) mask.

    Pixels off the mask get exactly zero gradient. The sum is divided by the batch's count of mask
    pixels, not by channels too, so an all-ones mask gives sum (prediction - target)^2 / (B H W):
    that is the "full" (LAPO) loss here, C = 3 times torch's mean squared error. A batch whose mask
    is empty everywhere gives 0 with zero gradients instead of 0/0 (PixelLAM counts such batches).
    Under DDP the count is summed over all ranks, so the gradient is that of the whole global batch.
    """
    mask = mask.to(prediction.dtype)
    return (mask[:, None] * (prediction - target).square()).sum() * ranks_scale() / global_count(mask.sum())


def ranks_scale() -> int:
    """DDP averages gradients over ranks: a rank's loss scaled by the rank count makes that average the
    gradient of the whole (all ranks') batch's loss, given denominators counted over all ranks."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_count(count: torch.Tensor) -> torch.Tensor:
    """A normaliser counted over the whole batch, all DDP ranks together (at least 1)."""
    if ranks_scale() > 1:
        count = count.detach().clone()
        dist.all_reduce(count)
    return count.clamp(min=1)


def row_mse(prediction: torch.Tensor, target: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the ``rows`` (B,) selected, 0 when none is; targets of the other rows
    (the loader's zeros for unlabelled actions, or anything else, NaN included) never reach the result or its
    gradient. No host sync."""
    weight = rows.to(prediction.dtype)[:, None]
    error = (prediction - torch.where(weight > 0, target, prediction.detach())).square()
    return (weight * error).sum() * ranks_scale() / (global_count(weight.sum()) * prediction.shape[1])


def mlp(in_dim: int, hidden_dim: int, out_dim: int, hidden_layers: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(hidden_layers):
        layers += [nn.Linear(in_dim if i == 0 else hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU()]
    return nn.Sequential(*layers, nn.Linear(hidden_dim if hidden_layers else in_dim, out_dim))


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    require(value in choices, name, value, f"choose one of {', '.join(choices)}")


def check_at_least(config: object, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        require(value >= minimum, name, value, f"must be at least {minimum}")


def check_encoder(config: object) -> None:
    """The fields every IMPALA-based config shares: the image must survive three stride-2 stages."""
    size = config.image_size
    require(
        size >= DOWNSAMPLING and size % DOWNSAMPLING == 0,
        "image_size",
        size,
        f"the encoder halves the image three times, so its side must be divisible by {DOWNSAMPLING} (32, 64, 128)",
    )
    check_at_least(config, 1, "frame_stack", "multiplier", "latent_dim")
    require(
        len(config.channels) == 3 and all(c >= 1 for c in config.channels),
        "channels",
        config.channels,
        "the IMPALA encoder has 3 stages: give 3 widths of at least 1, e.g. [16, 32, 32]",
    )
    require(0 < config.pixel_scale < math.inf, "pixel_scale", config.pixel_scale, "must be a positive number")


class Model(nn.Module):
    """``forward(batch)`` returns a dict holding "loss"; ``loss`` adds its scalars as metrics."""

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self(batch)
        return out["loss"], {name: value.detach() for name, value in out.items() if value.dim() == 0}


# --- LAPO and MaskLAM: pixel-space forward dynamics ---------------------------------------------
class IDM(nn.Module):
    """(input at t, input at t+k) -> latent action: IMPALA over the inputs concatenated on channels,
    a linear layer to ``latent_dim``, and the optional VQ bottleneck."""

    def __init__(
        self,
        in_channels: int,
        latent_dim: int,
        channels: tuple[int, ...],
        multiplier: int,
        image_size: int,
        vq: VectorQuantizer | None = None,
    ) -> None:
        super().__init__()
        self.encoder = ImpalaEncoder(in_channels, channels, multiplier, out_dim=latent_dim, image_size=image_size)
        self.vq = vq

    def forward(self, current: torch.Tensor, future: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        latent = self.encoder(torch.cat([current, future], 1))
        if self.vq is None:
            return latent, {}
        quantized = self.vq(latent)
        return quantized.latent, {"vq_loss": quantized.loss, "perplexity": quantized.perplexity}


class PixelFDM(nn.Module):
    """(input at t, latent) -> o_{t+1}: IMPALA encoder, the latent projected by a linear layer to the
    bottleneck's shape and concatenated on channels, the mirrored decoder, tanh x pixel scale."""

    def __init__(
        self,
        in_channels: int,
        latent_dim: int,
        channels: tuple[int, ...],
        multiplier: int,
        image_size: int,
        pixel_scale: float,
    ) -> None:
        super().__init__()
        self.encoder = ImpalaEncoder(in_channels, channels, multiplier)
        self.bottleneck = bottleneck_shape(channels, multiplier, image_size)
        self.inject = nn.Linear(latent_dim, math.prod(self.bottleneck))
        self.decoder = ImpalaDecoder(2 * self.bottleneck[0], RGB, channels, multiplier)
        self.pixel_scale = pixel_scale

    def forward(self, current: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        injected = self.inject(latent).view(-1, *self.bottleneck)
        x = torch.cat([self.encoder(current), injected], 1)
        return torch.tanh(self.decoder(x)) * self.pixel_scale


@dataclass(frozen=True)
class PixelLAMConfig:
    """Defaults: MaskLAM's paper configuration at 64 px (see presets.py for the others)."""

    image_size: int = 64
    frame_stack: int = 3
    channels: tuple[int, ...] = (16, 32, 32)
    multiplier: int = 4
    latent_dim: int = 128
    vq: bool = False  # LAPO's discrete bottleneck
    vq_codes: int = 64
    vq_code_dim: int = 16  # the latent is cut into latent_dim / vq_code_dim codes
    vq_commitment: float = 0.25
    mask_input: MaskInput = "channel"  # agent masks as IDM/FDM input: none | channel | pixels
    loss: Literal["full", "masked"] = "masked"  # full: LAPO; masked: MaskLAM
    pixel_scale: float = 0.5  # pixels in [-0.5, 0.5], FDM output tanh / 2

    def __post_init__(self) -> None:
        check_encoder(self)
        check_choice("mask_input", self.mask_input, MASK_INPUTS)
        check_choice("loss", self.loss, LOSSES)
        check_at_least(self, 1, "vq_codes", "vq_code_dim")
        require(0 <= self.vq_commitment < math.inf, "vq_commitment", self.vq_commitment, "must be a number >= 0")
        require(
            not self.vq or self.latent_dim % self.vq_code_dim == 0,
            "latent_dim",
            self.latent_dim,
            f"with vq = true it must be a multiple of vq_code_dim ({self.vq_code_dim})",
        )


class PixelLAM(Model):
    def __init__(self, config: PixelLAMConfig) -> None:
        super().__init__()
        self.config = c = config
        in_channels = stack_channels(c.frame_stack, c.mask_input)
        vq = VectorQuantizer(c.vq_codes, c.vq_code_dim, c.vq_commitment) if c.vq else None
        self.idm = IDM(2 * in_channels, c.latent_dim, c.channels, c.multiplier, c.image_size, vq)
        self.fdm = PixelFDM(in_channels, c.latent_dim, c.channels, c.multiplier, c.image_size, c.pixel_scale)
        # Batches whose next_mask is empty everywhere (their masked loss is 0); saved with the weights.
        self.register_buffer("empty_mask_batches", torch.zeros((), dtype=torch.long))

    def inputs(self, batch: Batch, key: str) -> torch.Tensor:
        """The network input for the stack ``key`` ("obs" or "future") and its masks."""
        masks = batch[f"{key}_mask"] if self.config.mask_input != "none" else None
        return model_input(batch[key], masks, self.config.pixel_scale, self.config.mask_input)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        current = self.inputs(batch, "obs")
        latent, parts = self.idm(current, self.inputs(batch, "future"))
        prediction = self.fdm(current, latent)
        target = preprocess(batch["next"], self.config.pixel_scale)
        if self.config.loss == "masked":
            mask = batch["next_mask"]
            self.empty_mask_batches += (mask.sum() == 0).long()
        else:
            mask = target.new_ones(target.shape[0], *target.shape[2:])
        rec_loss = masked_mse(prediction, target, mask)
        loss = rec_loss + parts.get("vq_loss", 0.0)
        return {
            "latent": latent,
            "prediction": prediction,
            "loss": loss,
            "rec_loss": rec_loss,
            **parts,
            "mask_fraction": mask.float().mean(),
            "empty_mask_batches": self.empty_mask_batches.clone(),
        }

    @torch.no_grad()
    def latent(self, batch: Batch) -> torch.Tensor:
        """The IDM's latent (quantised when VQ is on: what the FDM sees)."""
        return self.idm(self.inputs(batch, "obs"), self.inputs(batch, "future"))[0]


# --- LAOM: latent-space forward dynamics --------------------------------------------------------
@dataclass(frozen=True)
class LAOMConfig:
    """Defaults: LAOM's paper configuration at 64 px (see presets.py for the others)."""

    image_size: int = 64
    frame_stack: int = 3
    channels: tuple[int, ...] = (16, 32, 32)
    multiplier: int = 4
    latent_dim: int = 8192
    hidden_dim: int = 512  # of the IDM and FDM heads
    hidden_layers: int = 2
    normalize_embedding: bool = True  # LayerNorm (no affine) on the flattened encoder output
    tau: float = 0.001  # EMA rate of the target encoder
    pixel_scale: float = 1.0  # pixels in [-1, 1]
    # Settings: model.augment.enabled = false, model.augment.shift = 0.1, ...; None (Python) is the same as off.
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        check_encoder(self)
        check_at_least(self, 1, "hidden_dim")
        check_at_least(self, 0, "hidden_layers")
        require(0 < self.tau <= 1, "tau", self.tau, "the target encoder's EMA rate is in (0, 1] (LAOM: 0.001)")
        if self.augment is None:
            object.__setattr__(self, "augment", AugmentConfig(enabled=False))


class LAOM(Model):
    """IDM head over the embeddings of the stacks at t and t+k -> latent z; FDM head over the
    detached embedding at t and z -> the target encoder's embedding of the stack at t+1
    (o_{t-1}, o_t, o_{t+1} for S = 3), with MSE. The online encoder learns only through z; the
    target encoder is its EMA (``update_target`` after each optimiser step) and gets no gradient.
    In training mode the three stacks are augmented independently."""

    def __init__(self, config: LAOMConfig) -> None:
        super().__init__()
        self.config = c = config
        embed_dim = math.prod(bottleneck_shape(c.channels, c.multiplier, c.image_size))
        self.encoder = nn.Sequential(
            ImpalaEncoder(RGB * c.frame_stack, c.channels, c.multiplier),
            nn.Flatten(),
            nn.LayerNorm(embed_dim, elementwise_affine=False) if c.normalize_embedding else nn.Identity(),
        )
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.idm = mlp(2 * embed_dim, c.hidden_dim, c.latent_dim, c.hidden_layers)
        self.fdm = mlp(embed_dim + c.latent_dim, c.hidden_dim, embed_dim, c.hidden_layers)
        self.generator = torch.Generator().manual_seed(c.augment.seed) if c.augment.enabled else None

    def augmented(self, frames: torch.Tensor) -> torch.Tensor:
        """Preprocessed frames, randomly augmented in training mode."""
        x = preprocess(frames, self.config.pixel_scale)
        return augment(x, self.config.augment, self.generator) if self.training and self.generator is not None else x

    def idm_latent(self, obs: torch.Tensor, future: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding at t, latent) for preprocessed stacks; one encoder pass for both stacks."""
        obs_embedding, future_embedding = self.encoder(torch.cat([obs, future])).chunk(2)
        return obs_embedding, self.idm(torch.cat([obs_embedding, future_embedding], 1))

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        next_stack = torch.cat([batch["obs"][:, 1:], batch["next"][:, None]], 1)
        obs_embedding, latent = self.idm_latent(self.augmented(batch["obs"]), self.augmented(batch["future"]))
        prediction = self.fdm(torch.cat([obs_embedding.detach(), latent], 1))
        with torch.no_grad():
            target = self.target_encoder(self.augmented(next_stack))
        loss = F.mse_loss(prediction, target)
        return {"latent": latent, "prediction": prediction, "target": target, "loss": loss, "latent_loss": loss}

    @torch.no_grad()
    def latent(self, batch: Batch) -> torch.Tensor:
        scale = self.config.pixel_scale
        return self.idm_latent(preprocess(batch["obs"], scale), preprocess(batch["future"], scale))[1]

    @torch.no_grad()
    def update_target(self) -> None:
        """target <- (1 - tau) target + tau online."""
        for target, online in zip(self.target_encoder.parameters(), self.encoder.parameters()):
            target.lerp_(online, self.config.tau)


@dataclass(frozen=True)
class LAOMLabelsConfig(LAOMConfig):
    action_weight: float = 0.01  # lambda; LAOM used 0.001 for cheetah-run, sources disagree

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.action_weight < math.inf, "action_weight", self.action_weight, "lambda must be a number >= 0")


class LAOMLabels(LAOM):
    """LAOM plus a linear head latent -> action, trained each step on a separate labelled batch (the
    trainer streams it from the labelled records): ``labelled_obs`` / ``labelled_future`` stacks and
    ``labelled_action``. loss = latent loss (on the main batch) + action_weight x action MSE.

    With ``action_variance`` set (Var(a), the mean per-dimension variance of the dataset's actions, as the
    probe uses), the outputs also hold it and ``action_nmse`` = action MSE / Var(a): below 1 the head beats
    predicting the mean action."""

    LABELLED_KEYS = ("obs", "future", "action")  # of the labelled batch, each prefixed "labelled_"

    def __init__(self, config: LAOMLabelsConfig, action_dim: int, action_variance: float | None = None) -> None:
        super().__init__(config)
        self.action_head = nn.Linear(config.latent_dim, action_dim)
        self.action_variance = action_variance

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = super().forward(batch)
        # Same augmented encoder and IDM as the latent loss; every labelled row counts, so under DDP the
        # ranks' equal-sized means average to the global batch's mean.
        _, labelled_latent = self.idm_latent(self.augmented(batch["labelled_obs"]), self.augmented(batch["labelled_future"]))
        action_prediction = self.action_head(labelled_latent)
        action_loss = F.mse_loss(action_prediction, batch["labelled_action"])
        out["loss"] = out["latent_loss"] + self.config.action_weight * action_loss
        out |= {"action_prediction": action_prediction, "action_loss": action_loss}
        if self.action_variance is not None:
            variance = action_loss.new_tensor(self.action_variance)
            out |= {"action_variance": variance, "action_nmse": action_loss.detach() / variance.clamp(min=1e-12)}
        return out


# --- after the LAM: latent behaviour cloning and action decoding --------------------------------
@dataclass(frozen=True)
class LatentPolicyConfig:
    image_size: int = 64
    frame_stack: int = 3
    channels: tuple[int, ...] = (16, 32, 32)
    multiplier: int = 4
    latent_dim: int = 128  # the LAM's
    pixel_scale: float = 0.5

    def __post_init__(self) -> None:
        check_encoder(self)


class LatentPolicy(Model):
    """The frame stack o_{t-2..t} -> the frozen LAM's latent for (o_t, o_{t+1}), with MSE. The trainer
    puts that target in ``batch["latent_target"]`` (``lam.latent`` of a batch with k = 1)."""

    def __init__(self, config: LatentPolicyConfig) -> None:
        super().__init__()
        self.config = c = config
        self.net = ImpalaEncoder(RGB * c.frame_stack, c.channels, c.multiplier, out_dim=c.latent_dim, image_size=c.image_size)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        latent = self.net(preprocess(batch["obs"], self.config.pixel_scale))
        return {"latent": latent, "loss": F.mse_loss(latent, batch["latent_target"])}

    @torch.no_grad()
    def latent(self, batch: Batch) -> torch.Tensor:
        return self.net(preprocess(batch["obs"], self.config.pixel_scale))


@dataclass(frozen=True)
class ActionDecoderConfig:
    latent_dim: int = 128
    hidden_dim: int = 256
    hidden_layers: int = 2

    def __post_init__(self) -> None:
        check_at_least(self, 1, "latent_dim", "hidden_dim")
        check_at_least(self, 0, "hidden_layers")


class ActionDecoder(nn.Module):
    """An MLP latent -> action. ``forward`` takes latents; ``loss`` reads ``batch["latent"]`` (the frozen
    policy's), ``batch["action"]`` and trains on the ``batch["labelled"]`` rows only."""

    def __init__(self, config: ActionDecoderConfig, action_dim: int) -> None:
        super().__init__()
        self.config = config
        self.net = mlp(config.latent_dim, config.hidden_dim, action_dim, config.hidden_layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = row_mse(self(batch["latent"]), batch["action"], batch["labelled"])
        return loss, {"loss": loss.detach()}
