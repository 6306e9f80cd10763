"""LAOM's diagnostics (issue 32): the latent FDM's error with its own z and with z swapped, on synthetic
windows, and in the probe of a trained LAOM."""

from __future__ import annotations

import json

import torch

from masklam.eval.diagnostics import latent_fdm_diagnostics
from masklam.models.lam import preprocess
from masklam.models.presets import build_lam, lam_config


def windows(batches: int = 3, batch: int = 8, size: int = 32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    for index in range(batches):
        yield {
            "obs": torch.randint(0, 256, (batch, 3, size, size, 3), generator=generator, dtype=torch.uint8),
            "future": torch.randint(0, 256, (batch, 3, size, size, 3), generator=generator, dtype=torch.uint8),
            "episode": torch.arange(batch) % 3 + 10 * index,  # three episodes per batch, each seen two or three times
        }


def laom() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_lam(lam_config("laom", "tiny", 32, frame_stack=3), action_dim=6).eval()


def test_swapping_z_changes_nothing_when_the_fdm_ignores_it():
    model = laom()
    with torch.no_grad():
        model.fdm[0].weight[:, -model.config.latent_dim :] = 0  # the FDM's first layer reads [embedding, z]
    result = latent_fdm_diagnostics(model, windows())
    assert result["windows"] == 24
    for swapped in ("fdm_error_random_z", "fdm_error_mean_z"):
        assert abs(result[swapped] - result["fdm_error"]) < 1e-6 * result["fdm_error"]
    assert abs(result["fdm_error_same_episode_z"] - result["fdm_error_same_episode_rows"]) < 1e-6 * result["fdm_error"]


def test_swapping_z_changes_the_error_when_the_fdm_reads_it_and_the_change_is_the_targets():
    model = laom()
    result = latent_fdm_diagnostics(model, windows(), limit=20)
    assert result["windows"] == 20
    assert result["fdm_error_random_z"] != result["fdm_error"] and result["fdm_error_mean_z"] != result["fdm_error"]
    # The target's one-step change, computed here without the function: the target encoder at t+1 against t.
    with torch.no_grad():
        batches = list(windows())
        obs = torch.cat([b["obs"] for b in batches])[:20]
        future = torch.cat([b["future"] for b in batches])[:20]
        scale = model.config.pixel_scale
        change = ((model.target_encoder(preprocess(future, scale)) - model.target_encoder(preprocess(obs, scale))) ** 2).mean()
    assert abs(result["target_one_step_change"] - float(change)) < 1e-5 * float(change)


def test_the_probe_of_a_laom_run_records_its_diagnostics(masklam_cli, tmp_path):
    from masklam.data.collect import CollectConfig, collect
    from masklam.envs.spec import EnvSpec, RenderSpec, distractor_preset

    data = tmp_path / "data"
    env = EnvSpec("dmc:cheetah-run", RenderSpec(size=32), distractor_preset("low"), episode_steps=12)
    collect(CollectConfig(env=env, episodes=3, test_episodes=1, episodes_per_shard=3, seed=1), data, show_progress=False)
    run = tmp_path / "run"
    train = ["train", "lam", "--data", str(data), "--out", str(run), "--trainer", "laom-tiny", "--set", "optim.steps=2", "--set", "data.batch_size=4"]
    assert masklam_cli(*train, "--no-progress").returncode == 0
    done = masklam_cli("probe", str(run), "--data", str(data), "--windows", "30", "--no-progress")
    assert done.returncode == 0 and "latent FDM error" in done.stdout, done.stderr
    diagnostics = json.loads((run / "probe.json").read_text())["fdm_diagnostics"]
    assert 10 <= diagnostics["windows"] <= 30 and diagnostics["target_one_step_change"] > 0
    assert diagnostics["episodes"] == 3  # a sample of every train episode, not the first ones' windows


def test_thinning_keeps_a_seeded_share_of_every_batch():
    from masklam.eval.diagnostics import thinned

    batches = list(windows(batches=10, batch=40))
    kept = list(thinned(batches, 0.25, seed=3))
    assert len(kept) == 10 and 60 <= sum(len(b["episode"]) for b in kept) <= 140  # 100 expected of 400
    assert all(torch.isin(b["episode"], a["episode"]).all() for a, b in zip(batches, kept))
    again = list(thinned(batches, 0.25, seed=3))
    assert all(torch.equal(a["obs"], b["obs"]) for a, b in zip(kept, again))
    assert list(thinned(batches, 1.0)) == batches


def test_the_targets_augmentation_spread_is_what_augmenting_adds():
    """No spread from augmentations that change nothing; some from LAOM's; none recorded without augmenting."""
    import dataclasses

    from masklam.models.augment import AugmentConfig

    def with_augment(**settings) -> torch.nn.Module:
        model = laom()
        model.config = dataclasses.replace(model.config, augment=AugmentConfig(**settings))
        return model

    assert latent_fdm_diagnostics(with_augment(compositions=("none",)), windows())["target_augmentation_spread"] == 0.0
    spread = latent_fdm_diagnostics(with_augment(), windows())["target_augmentation_spread"]
    assert spread > 0
    assert latent_fdm_diagnostics(with_augment(enabled=False), windows())["target_augmentation_spread"] is None
