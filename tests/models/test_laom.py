"""LAOM's EMA target encoder and its augmentations."""

import dataclasses

import torch

from masklam.models import LAOM, AugmentConfig, LAOMLabels, augment, lam_config


def tiny_laom(**overrides) -> LAOM:
    return LAOM(lam_config("laom", "tiny", channels=(4, 8, 8), latent_dim=32, hidden_dim=32, **overrides))


def test_the_target_moves_by_tau_toward_the_online_encoder():
    model = tiny_laom(tau=0.01)
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.target_encoder.parameters()]
    model.update_target()
    for old, new, online in zip(before, model.target_encoder.parameters(), model.encoder.parameters()):
        torch.testing.assert_close(new, old + 0.01 * (online - old))
        assert not torch.equal(new, old)


def test_the_target_gets_no_gradient_and_the_encoder_learns_only_through_the_latent(make_batch):
    model = tiny_laom()
    loss, metrics = model.loss(make_batch())
    loss.backward()
    assert set(metrics) == {"loss", "latent_loss"}
    assert all(not p.requires_grad and p.grad is None for p in model.target_encoder.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters() if p.requires_grad)
    # The FDM's input embedding is detached: cut the IDM's input too and no gradient reaches the encoder.
    model.zero_grad(set_to_none=True)
    model.idm.register_forward_pre_hook(lambda module, inputs: tuple(x.detach() for x in inputs))
    model.loss(make_batch())[0].backward()
    assert all(p.grad is None for p in model.encoder.parameters())


def test_augmentations_are_deterministic_given_a_generator_and_differ_per_input():
    images = torch.rand(1, 9, 32, 32).repeat(6, 1, 1, 1)
    first = augment(images, AugmentConfig(), torch.Generator().manual_seed(3))
    again = augment(images, AugmentConfig(), torch.Generator().manual_seed(3))
    assert torch.equal(first, again) and first.shape == images.shape
    assert len({tuple(image.flatten()[:50].tolist()) for image in first}) > 1  # identical inputs, different draws
    config = AugmentConfig(compositions=("rotate",))
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(augment(images, config, g), augment(images, config, g))  # successive calls draw anew


def test_the_primitives_are_the_transforms_they_claim():
    images = torch.rand(4, 3, 32, 32)
    g = torch.Generator().manual_seed(1)
    torch.testing.assert_close(augment(images, AugmentConfig(compositions=("none",)), g), images)
    shifted = augment(images, AugmentConfig(compositions=("shift",), shift=0.25), g)
    for image, out in zip(images, shifted):
        # An integer translation of at most 8 px: the centre 16 x 16 is the input, moved.
        found = [
            (dx, dy)
            for dx in range(-8, 9)
            for dy in range(-8, 9)
            if torch.allclose(out[:, 8:24, 8:24], image[:, 8 + dy : 24 + dy, 8 + dx : 24 + dx], atol=1e-5)
        ]
        assert len(found) == 1
    quarter = augment(images, AugmentConfig(compositions=("rotate",), rotation=0.0), g)
    torch.testing.assert_close(quarter, images)
    flat = augment(images, AugmentConfig(compositions=("perspective",), perspective=0.0), g)
    torch.testing.assert_close(flat, images)


def test_laom_augments_only_in_training_and_never_in_latent(make_batch):
    model = tiny_laom()
    batch = make_batch()
    first, second = model(batch)["loss"], model(batch)["loss"]
    assert first != second  # fresh draws each step
    torch.testing.assert_close(model.latent(batch), model.latent(batch))
    model.eval()
    torch.testing.assert_close(model(batch)["loss"], model(batch)["loss"])
    assert tiny_laom(augment=None).generator is None
    seeded = [tiny_laom(augment=dataclasses.replace(AugmentConfig(), seed=5)) for _ in range(2)]
    seeded[1].load_state_dict(seeded[0].state_dict())
    torch.testing.assert_close(seeded[0](batch)["loss"], seeded[1](batch)["loss"])


def test_laom_labels_fits_its_action_head_on_the_separate_labelled_batch_only(make_batch):
    config = lam_config("laom-labels", "tiny", channels=(4, 8, 8), latent_dim=32, hidden_dim=32, augment=None)
    model = LAOMLabels(config, action_dim=2)
    batch = make_batch()
    out = model(batch)
    torch.testing.assert_close(out["loss"], out["latent_loss"] + config.action_weight * out["action_loss"])
    assert out["action_prediction"].shape == batch["labelled_action"].shape
    # The main batch's actions play no part; the labelled batch's do.
    unchanged = model({**batch, "action": torch.randn_like(batch["action"])})
    changed = model({**batch, "labelled_action": batch["labelled_action"] + 1})
    torch.testing.assert_close(unchanged["action_loss"], out["action_loss"])
    assert not torch.isclose(changed["action_loss"], out["action_loss"])
    # The action loss trains the encoder and the IDM too, not only the head.
    model.zero_grad(set_to_none=True)
    out["action_loss"].backward()
    assert model.action_head.weight.grad.abs().sum() > 0 and model.idm[0].weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
