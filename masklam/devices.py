"""Which device masklam computes on: one choice for every stage of a run (the LAM, latent BC, BC on actions, the
decoder, the probe, the online evaluation). ``auto``, the default everywhere, is CUDA when torch sees a GPU and
the CPU otherwise. The stages after the LAM take it as an argument, not a setting: their recorded settings (and
a recipe's step hashes) are the same on any device, and a run folder resumes on another machine."""

from __future__ import annotations

import torch

from masklam.errors import UsageError

AUTO = "auto"


def resolve(device: str = AUTO) -> str:
    """``device`` as torch names it: ``auto`` becomes ``cuda`` or ``cpu``; a CUDA device without a GPU is refused."""
    if device == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError:
        raise UsageError(f"device {device!r}: use auto, cpu, cuda, cuda:1, mps, ...") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} but torch sees no CUDA GPU here: use --device cpu (or auto)")
    return device


def device_of(model: torch.nn.Module) -> torch.device:
    """The device a model's parameters are on: where its inputs go."""
    return next(model.parameters()).device


def to_device(batch: dict[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    """A batch on ``device``; from pinned memory the copy overlaps the next batch's loading."""
    return {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
