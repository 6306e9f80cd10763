"""Shapes at every image size, and the VQ bottleneck's gradients."""

import pytest
import torch

from masklam.models import LAOM, ImpalaDecoder, ImpalaEncoder, PixelLAM, lam_config


@pytest.mark.parametrize("size", [32, 64, 128])
def test_shapes_at_every_image_size(make_batch, size):
    x = torch.randn(2, 9, size, size)
    features = ImpalaEncoder(9, (4, 8, 8), 2)(x)
    assert features.shape == (2, 16, size // 8, size // 8)
    assert ImpalaDecoder(16, 3, (4, 8, 8), 2)(features).shape == (2, 3, size, size)
    assert ImpalaEncoder(9, (4, 8, 8), 2, out_dim=5, image_size=size)(x).shape == (2, 5)

    batch = make_batch(batch=2, size=size)
    out = PixelLAM(lam_config("masklam", "tiny", size, channels=(4, 8, 8)))(batch)
    assert out["prediction"].shape == (2, 3, size, size) and out["latent"].shape == (2, 128)
    assert out["prediction"].abs().max() <= 0.5
    laom = LAOM(lam_config("laom", "tiny", size, channels=(4, 8, 8), latent_dim=64))
    assert laom.latent(batch).shape == (2, 64)


def test_image_size_must_be_divisible_by_8():
    with pytest.raises(ValueError, match="divisible"):
        PixelLAM(lam_config("masklam", "tiny", 36))


def test_vq_passes_gradients_straight_through_to_the_encoder(make_batch):
    model = PixelLAM(lam_config("lapo-vq", "tiny", channels=(4, 8, 8)))
    out = model(make_batch())
    assert torch.isfinite(out["vq_loss"]) and out["vq_loss"] > 0
    assert 1 <= out["perplexity"] <= model.config.vq_codes
    # The reconstruction alone, not the commitment term, must reach the IDM through the rounding.
    grads = torch.autograd.grad(out["rec_loss"], list(model.idm.encoder.parameters()))
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    codebook = model.idm.vq.codebook
    assert torch.autograd.grad(out["vq_loss"], codebook)[0].abs().sum() > 0
    torch.testing.assert_close(model.latent(make_batch()), out["latent"].detach())
