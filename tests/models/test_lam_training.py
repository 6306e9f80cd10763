"""Every model overfits a fixed tiny batch: its loss falls within 30 Adam steps."""

import pytest
import torch

from masklam.models import METHODS, ActionDecoder, ActionDecoderConfig, LatentPolicy, build_lam, lam_config, policy_config

STEPS = 30


def scene_batch(make_batch, size: int = 32, agent: int = 8) -> dict:
    """A plain coloured background and a white square agent at a random place in each frame, which
    the masks mark: learnable in a few steps, unlike pixel noise."""
    batch = make_batch(size=size)
    g = torch.Generator().manual_seed(1)
    background = torch.tensor([40, 200, 90], dtype=torch.uint8)
    for key in ("obs", "future", "next"):
        frames, masks = batch[key], batch[f"{key}_mask"]
        frames[:] = background
        masks.zero_()
        corners = torch.randint(0, size - agent, (*masks.shape[:-2], 2), generator=g).view(-1, 2)
        for frame, mask, (y, x) in zip(frames.view(-1, size, size, 3), masks.view(-1, size, size), corners.tolist()):
            frame[y : y + agent, x : x + agent] = 255
            mask[y : y + agent, x : x + agent] = 1
    return batch


def fit(model: torch.nn.Module, batch: dict, lr: float = 3e-3) -> tuple[float, float]:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(STEPS):
        loss, _ = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if hasattr(model, "update_target"):
            model.update_target()
        losses.append(loss.item())
    return losses[0], min(losses[-5:])


@pytest.mark.parametrize("method", METHODS)
def test_each_lam_overfits_a_tiny_batch(make_batch, method):
    torch.manual_seed(0)
    heads = {"latent_dim": 32, "hidden_dim": 32, "augment": None} if method.startswith("laom") else {}
    batch = scene_batch(make_batch)
    model = build_lam(lam_config(method, "tiny", **heads), action_dim=batch["action"].shape[1])
    first, last = fit(model, batch)
    assert last < 0.5 * first, (first, last)


def test_the_latent_policy_and_action_decoder_overfit_a_tiny_batch(make_batch):
    torch.manual_seed(0)
    batch = scene_batch(make_batch)
    lam = lam_config("masklam", "tiny", latent_dim=16)
    batch["latent_target"] = torch.randn(4, 16)
    first, last = fit(LatentPolicy(policy_config("tiny", lam)), batch)
    assert last < 0.5 * first, (first, last)
    batch["latent"] = torch.randn(4, 16)
    first, last = fit(ActionDecoder(ActionDecoderConfig(latent_dim=16), batch["action"].shape[1]), batch)
    assert last < 0.5 * first, (first, last)
