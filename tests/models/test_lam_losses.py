"""MaskLAM's masked reconstruction loss, the full-frame loss it generalises, and the labelled-rows loss."""

import torch

from masklam.models import PixelLAM, lam_config, masked_mse
from masklam.models.lam import row_mse


def test_background_pixels_get_exactly_zero_gradient():
    g = torch.Generator().manual_seed(0)
    prediction = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    target = torch.randn(2, 3, 8, 8, generator=g)
    mask = (torch.rand(2, 8, 8, generator=g) < 0.4).to(torch.uint8)
    (grad,) = torch.autograd.grad(masked_mse(prediction, target, mask), prediction)
    off = (mask == 0)[:, None].expand_as(grad)
    assert torch.equal(grad[off], torch.zeros_like(grad[off]))
    assert (grad[~off] != 0).all()


def test_all_ones_mask_is_the_full_frame_loss(make_batch):
    batch = make_batch()
    batch["next_mask"] = torch.ones_like(batch["next_mask"])
    masked = PixelLAM(lam_config("masklam", "tiny", channels=(4, 8, 8), mask_input="none"))
    full = PixelLAM(lam_config("lapo", "tiny", channels=(4, 8, 8)))
    full.load_state_dict(masked.state_dict())
    out = masked(batch)
    torch.testing.assert_close(out["rec_loss"], full(batch)["rec_loss"])
    prediction = out["prediction"]
    target = (batch["next"].float() / 255 - 0.5).permute(0, 3, 1, 2)
    b, _, h, w = prediction.shape
    torch.testing.assert_close(out["rec_loss"], ((prediction - target) ** 2).sum() / (b * h * w))


def test_normalised_by_the_batch_count_of_mask_pixels():
    prediction = torch.zeros(2, 3, 4, 4)
    target = torch.ones(2, 3, 4, 4)
    target[1] = 2.0  # squared error 1 per value in sample 0, 4 in sample 1
    mask = torch.zeros(2, 4, 4)
    mask[0, :1] = 1  # 4 pixels
    mask[1, :3] = 1  # 12 pixels
    expected = (4 * 3 * 1 + 12 * 3 * 4) / (4 + 12)
    assert masked_mse(prediction, target, mask).item() == expected
    per_sample_mean = (3 * 1 + 3 * 4) / 2  # what averaging per sample would give instead
    assert expected != per_sample_mean


def test_an_empty_batch_mask_gives_zero_and_is_counted(make_batch):
    prediction = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = masked_mse(prediction, torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4))
    (grad,) = torch.autograd.grad(loss, prediction)
    assert loss.item() == 0 and torch.equal(grad, torch.zeros_like(grad))

    model = PixelLAM(lam_config("masklam", "tiny", channels=(4, 8, 8)))
    batch = make_batch()
    batch["next_mask"] = torch.zeros_like(batch["next_mask"])
    loss, metrics = model.loss(batch)
    loss.backward()
    assert loss.item() == 0 and metrics["empty_mask_batches"].item() == 1
    assert model.state_dict()["empty_mask_batches"].item() == 1


def test_row_mse_uses_only_the_selected_rows():
    prediction = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0], [float("nan"), float("nan")], [5.0, 4.0]])
    rows = torch.tensor([True, False, True])
    loss = row_mse(prediction, target, rows)
    assert loss.item() == (1 + 4 + 0 + 4) / 4
    loss.backward()
    assert torch.equal(prediction.grad[1], torch.zeros(2)) and torch.isfinite(prediction.grad).all()
    assert row_mse(prediction, target, torch.zeros(3, dtype=torch.bool)).item() == 0
