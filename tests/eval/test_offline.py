"""`masklam score-actions`: each link of the decoded policy scored on the recorded windows of the test split and
of the in-pool episodes, against actions read straight from the dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from masklam.configs import load_config
from masklam.data.collect import CollectConfig, collect
from masklam.data.dataset import open_dataset
from masklam.envs.spec import EnvSpec, RenderSpec, distractor_preset
from masklam.eval.offline import score_actions
from masklam.eval.outputs import ACTION_SCORES
from masklam.train.lam import LAMTrainConfig, train_lam
from masklam.train.loader import action_variance
from masklam.train.loop import OptimConfig, load_checkpoint, save_checkpoint
from masklam.train.presets import trainer_file
from masklam.train.stages import StageConfig, train_action_bc, train_bc, train_decoder


@pytest.fixture(scope="module")
def decoded_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny MaskLAM run through the decoder: 4 train episodes (one of them in-pool), 2 test episodes."""
    root = tmp_path_factory.mktemp("offline")
    data, run = root / "data", root / "run"
    env = EnvSpec("dmc:cheetah-run", RenderSpec(size=32), distractor_preset("low"), episode_steps=12)
    collect(CollectConfig(env=env, episodes=4, test_episodes=2, episodes_per_shard=2, seed=4), data, show_progress=False)
    config = load_config(LAMTrainConfig, trainer_file("masklam-tiny"), [f'data.path="{data}"', "data.batch_size=8", "optim.steps=2", "model.latent_dim=8"])
    train_lam(config, run, show_progress=False)
    stage = StageConfig(preset="tiny", batch_size=8, optim=OptimConfig(steps=2))
    train_bc(run, stage, show_progress=False)
    train_decoder(run, stage, show_progress=False)
    return data, run


def recorded_actions(data: Path, split: str, episodes: set[int] | None = None) -> np.ndarray:
    """Every window's action a_t (t = 0 .. frames - 2 of each record), read from the records, not a loader."""
    dataset = open_dataset(data)
    actions = [record.steps["action"][:-1] for record in dataset.records(split, (), ("action",)) if episodes is None or record.meta.episode in episodes]
    return np.concatenate(actions).astype(np.float64)


def test_each_link_is_scored_on_the_split_it_names(decoded_run):
    data, run = decoded_run
    # A decoder that always says 0: its error is the recorded actions' mean square over Var(a), whatever the latent.
    from masklam.models.lam import ActionDecoder, ActionDecoderConfig

    decoder = ActionDecoder(ActionDecoderConfig(latent_dim=8), 6)
    load_checkpoint(run / "decoder.pt", decoder)
    for parameter in decoder.net[-1].parameters():
        torch.nn.init.zeros_(parameter)
    save_checkpoint(run / "decoder.pt", decoder, torch.optim.AdamW(decoder.parameters()), 2)

    result = score_actions(run, show_progress=False)
    dataset = open_dataset(data)
    variance = float(np.mean(action_variance(data)))
    in_pool = dataset.in_pool_episodes()
    assert len(in_pool) == 1 and result["in_pool"]["episodes"] == sorted(in_pool)
    assert result["test"]["episodes"] == sorted({meta.episode for meta in dataset.index("test")})
    for split, source, episodes in (("test", "test", None), ("in_pool", "train", in_pool)):
        actions = recorded_actions(data, source, episodes)
        assert result[split]["windows"] == len(actions)
        expected = float(np.mean(actions**2) / variance)
        assert result[split]["decoded_policy"] == pytest.approx(expected, rel=1e-5)
        assert result[split]["decoder_on_lam_latent"] == pytest.approx(expected, rel=1e-5)
        assert 0 < result[split]["latent_bc"] and result[split]["bc_actions"] is None  # no BC on true actions yet
    assert json.loads((run / ACTION_SCORES).read_text()) == json.loads(json.dumps(result))

    # At most --windows per split; BC on true actions scored once the run folder has it.
    train_action_bc(run, StageConfig(preset="tiny", batch_size=8, optim=OptimConfig(steps=2)), show_progress=False)
    capped = score_actions(run, windows=7, show_progress=False)
    assert capped["test"]["windows"] == capped["in_pool"]["windows"] == 7
    assert all(capped[split]["bc_actions"] > 0 for split in ("test", "in_pool"))


def test_a_folder_without_a_decoder_is_one_line(masklam_cli, decoded_run, tmp_path):
    import shutil

    _, run = decoded_run
    shutil.copytree(run, tmp_path / "run", ignore=shutil.ignore_patterns("decoder*", ACTION_SCORES))
    done = masklam_cli("score-actions", str(tmp_path / "run"), "--no-progress")
    assert done.returncode == 2 and "no action decoder" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / ACTION_SCORES).exists()
