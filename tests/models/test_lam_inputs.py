"""Pixel scaling, stack layout and the three ways masks reach the IDM and FDM."""

import pytest
import torch

from masklam.models import PixelLAM, lam_config, preprocess
from masklam.models.lam import model_input


@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_preprocess_scales_and_folds_the_stack_frame_by_frame(scale):
    frames = torch.zeros(1, 2, 4, 4, 3, dtype=torch.uint8)
    frames[0, 1, :, :, 2] = 255  # frame 1, blue
    x = preprocess(frames, scale)
    assert x.shape == (1, 6, 4, 4)
    assert (x[0, 5] == scale).all() and (x[0, :5] == -scale).all()
    assert preprocess(frames[:, 1], scale).shape == (1, 3, 4, 4)


@pytest.mark.parametrize("mask_input", ["none", "channel", "pixels"])
def test_network_inputs_come_in_the_convolutions_layout(make_batch, mask_input):
    """channels_last, as the networks' weights are: no copy to that layout in front of each IDM and FDM. The values
    are those of the plain channels-first fold."""
    batch = make_batch()
    x = model_input(batch["obs"], batch["obs_mask"], 0.5, mask_input)
    assert x.is_contiguous(memory_format=torch.channels_last)
    folded = (batch["obs"].float() * (1 / 255) - 0.5).permute(0, 1, 4, 2, 3).flatten(1, 2)  # (B, S*3, H, W), frame by frame
    assert torch.equal(preprocess(batch["obs"], 0.5), folded)
    assert preprocess(batch["next"], 0.5).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("mask_input, idm_channels, fdm_channels", [("none", 18, 9), ("channel", 24, 12), ("pixels", 18, 9)])
def test_mask_input_sets_the_input_channels(make_batch, mask_input, idm_channels, fdm_channels):
    model = PixelLAM(lam_config("masklam", "tiny", channels=(4, 8, 8), mask_input=mask_input))
    assert model.idm.encoder.stack[0].in_channels == idm_channels
    assert model.fdm.encoder.stack[0].in_channels == fdm_channels
    assert model(make_batch())["prediction"].shape == (4, 3, 32, 32)


def test_pixels_option_zeroes_the_non_agent_pixels(make_batch):
    batch = make_batch()
    x = model_input(batch["obs"], batch["obs_mask"], 0.5, "pixels")
    off = (batch["obs_mask"] == 0).repeat_interleave(3, dim=1)
    assert (x[off] == 0).all()
    torch.testing.assert_close(x[~off], preprocess(batch["obs"], 0.5)[~off])
    channel = model_input(batch["obs"], batch["obs_mask"], 0.5, "channel")
    assert torch.equal(channel[:, 9:], batch["obs_mask"].float())


def test_with_pixel_masking_the_background_cannot_change_the_latent(make_batch):
    model = PixelLAM(lam_config("masklam", "tiny", channels=(4, 8, 8), mask_input="pixels"))
    batch = make_batch()
    other = dict(batch)
    for key in ("obs", "future"):
        background = (batch[f"{key}_mask"] == 0)[..., None].expand_as(batch[key])
        other[key] = torch.where(background, 255 - batch[key], batch[key])
    assert not torch.equal(other["obs"], batch["obs"])
    torch.testing.assert_close(model.latent(other), model.latent(batch))
