"""`masklam collect` end to end on tiny budgets: real rendering, real shards, both backends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from masklam.data.collect import CollectConfig, collect, plan_shards
from masklam.data.dataset import open_dataset
from masklam.envs.spec import EnvSpec, RenderSpec, distractor_preset
from masklam.errors import UsageError

BACKENDS = ("webdataset", "zarr")


def tiny_config(backend: str = "webdataset", **changes) -> CollectConfig:
    env = changes.pop("env", EnvSpec("dmc:cheetah-run", RenderSpec(size=32), distractor_preset("low"), episode_steps=12))
    settings = dict(backend=backend, episodes=4, test_episodes=2, episodes_per_shard=2, seed=3)
    settings.update(changes)
    return CollectConfig(env=env, **settings)


def files_of(root: Path) -> dict[str, bytes]:
    """Every file's bytes; the recorded command line (which names the output folder) is left out."""
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.name in ("collect.json", "info.json"):
                content = json.loads(data)
                (content.get("collect") or content).pop("command")
                data = json.dumps(content, sort_keys=True).encode()
            files[str(path.relative_to(root))] = data
    return files


@pytest.fixture(scope="module", params=BACKENDS)
def dataset_dir(request, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp(f"collected-{request.param}")
    assert collect(tiny_config(request.param, labelled_episodes=1), root, show_progress=False)
    return root


def test_dataset_round_trip(dataset_dir):
    dataset = open_dataset(dataset_dir)
    info = dataset.info
    assert info["splits"]["train"]["episodes"] == 4 and info["splits"]["test"]["episodes"] == 2
    assert info["splits"]["train"]["frames"] == 4 * 13
    assert set(info["features"]) >= {"rgb", "state", "action", "reward", "terminated", "truncated", "distractor_bg_video", "distractor_bg_frame"}
    assert info["env"]["render"]["shadows"] is False and info["fps"] == 100.0
    low, high = np.array(info["action_bounds"]["low"]), np.array(info["action_bounds"]["high"])
    for split in ("train", "test"):
        for record in dataset.records(split):
            steps, mask = record.steps, record.masks["oracle"]
            assert steps["rgb"].shape == (13, 32, 32, 3) and steps["rgb"].dtype == np.uint8
            assert mask.shape == (13, 32, 32) and mask.dtype == np.uint8 and 0 < mask.mean() < 0.5
            assert steps["truncated"][-1] and not steps["truncated"][:-1].any() and not steps["terminated"].any()
            assert np.isnan(steps["reward"][-1]) and np.isfinite(steps["reward"][:-1]).all()
            np.testing.assert_allclose(np.nansum(steps["reward"]), record.meta.episode_return, rtol=1e-5)
            if record.meta.labelled:
                actions = steps["action"]
                assert np.isnan(actions[-1]).all()
                assert ((actions[:-1] >= low) & (actions[:-1] <= high)).all()
            else:
                assert "action" not in steps


def test_sparse_labels_keep_actions_for_chosen_train_episodes_only(dataset_dir):
    dataset = open_dataset(dataset_dir)
    train = dataset.index("train")
    assert sum(r.labelled for r in train) == 1
    assert all(r.labelled for r in dataset.index("test"))
    assert dataset.info["splits"]["train"]["labelled_episodes"] == 1
    # Var(a) is over every train transition's true action: random actions in [-1, 1] have variance 1/3.
    assert 0.15 < dataset.info["action_stats"]["var_mean"] < 0.5


def test_label_fraction_rounds_to_episodes(tmp_path):
    assert collect(tiny_config(label_fraction=0.5, test_episodes=0), tmp_path, show_progress=False)
    assert sum(r.labelled for r in open_dataset(tmp_path).index("train")) == 2


def test_test_split_uses_held_out_seeds_and_videos(dataset_dir):
    dataset = open_dataset(dataset_dir)
    train_seeds = {r.seed for r in dataset.index("train")}
    test_seeds = {r.seed for r in dataset.index("test")}
    assert not train_seeds & test_seeds
    from masklam.envs.video import open_video_pools

    pools = open_video_pools("builtin")
    test_videos = {int(v) for r in dataset.records("test") for v in r.steps["distractor_bg_video"]}
    assert all(pools["test"].names[v] not in pools["train"].names for v in test_videos)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_same_command_gives_byte_identical_data_with_any_worker_count(tmp_path, backend):
    config = tiny_config(backend, episodes=3, test_episodes=1)
    collect(config, tmp_path / "one", show_progress=False)
    collect(config, tmp_path / "again", show_progress=False)
    collect(config, tmp_path / "two", workers=2, show_progress=False)
    one = files_of(tmp_path / "one")
    assert one == files_of(tmp_path / "again")
    assert one == files_of(tmp_path / "two")
    assert not [name for name in one if name.endswith(".tmp") or "/.tmp" in name]


def test_a_different_seed_gives_different_frames(tmp_path):
    collect(tiny_config(episodes=1, test_episodes=0), tmp_path / "a", show_progress=False)
    collect(tiny_config(episodes=1, test_episodes=0, seed=4), tmp_path / "b", show_progress=False)
    a = next(open_dataset(tmp_path / "a").records("train"))
    b = next(open_dataset(tmp_path / "b").records("train"))
    assert not np.array_equal(a.steps["rgb"], b.steps["rgb"])


def test_ranks_split_the_shards_and_the_last_one_completes_the_dataset(tmp_path):
    config = tiny_config(episodes=4, test_episodes=2)
    assert not collect(config, tmp_path / "ranked", rank=0, world_size=2, show_progress=False)
    assert not (tmp_path / "ranked" / "info.json").exists()
    assert collect(config, tmp_path / "ranked", rank=1, world_size=2, show_progress=False)
    collect(config, tmp_path / "whole", show_progress=False)
    assert files_of(tmp_path / "ranked") == files_of(tmp_path / "whole")


def test_rank_comes_from_torchrun_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    config = tiny_config(episodes=6, test_episodes=0)
    collect(config, tmp_path, show_progress=False)
    written = sorted(p.name for p in (tmp_path / "index" / "train").iterdir())
    assert written == ["shard-000001.json"] and len(plan_shards(config)) == 3


def test_chunked_records_rejoin_into_the_same_episode(tmp_path):
    collect(tiny_config(episodes=1, test_episodes=0), tmp_path / "whole", show_progress=False)
    collect(tiny_config(episodes=1, test_episodes=0, chunk_steps=5), tmp_path / "chunked", show_progress=False)
    chunked = open_dataset(tmp_path / "chunked")
    records = list(chunked.records("train"))
    assert [r.meta.frames for r in records] == [6, 6, 3] and [r.meta.start for r in records] == [0, 5, 10]
    whole = open_dataset(tmp_path / "whole").episode("train", 0)
    rejoined = chunked.episode("train", 0)
    for name, array in whole.steps.items():
        np.testing.assert_array_equal(rejoined.steps[name], array)
    np.testing.assert_array_equal(rejoined.masks["oracle"], whole.masks["oracle"])


def test_output_made_by_another_command_is_refused_unless_overwrite(tmp_path):
    collect(tiny_config(episodes=1, test_episodes=0), tmp_path, show_progress=False)
    before = files_of(tmp_path)
    with pytest.raises(UsageError, match="not made by this command.*--overwrite"):
        collect(tiny_config(episodes=2, test_episodes=0), tmp_path, show_progress=False)
    assert files_of(tmp_path) == before
    collect(tiny_config(episodes=2, test_episodes=0), tmp_path, overwrite=True, show_progress=False)
    assert open_dataset(tmp_path).info["splits"]["train"]["episodes"] == 2


def test_foreign_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        collect(tiny_config(episodes=1, test_episodes=0), tmp_path, show_progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def collect_args(out: Path) -> list[str]:
    return [
        "collect",
        "--env",
        "dmc:cheetah-run",
        "--distractors",
        "low",
        "--size",
        "32",
        "--steps",
        "40",
        "--episodes",
        "6",
        "--test-episodes",
        "0",
        "--episodes-per-shard",
        "1",
        "--seed",
        "5",
        "--out",
        str(out),
        "--no-progress",
    ]


@pytest.mark.slow
def test_resume_after_a_killed_collect_completes_identically(masklam_cli, tmp_path):
    # The killed collect is a real process killed with SIGKILL; resuming it and the uninterrupted collect go
    # through the same command in this process (no second and third interpreter to start).
    env = dict(os.environ, MUJOCO_GL="egl")
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "masklam.cli", *collect_args(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    index = killed / "index" / "train"
    deadline = time.time() + 120
    while time.time() < deadline and not (index.is_dir() and len(list(index.glob("*.json"))) >= 2):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list(index.glob("*.json")))
    assert 2 <= finished < 6, "the kill should land mid-run"
    assert not (killed / "info.json").exists()
    for out in (killed, tmp_path / "straight"):
        done = masklam_cli(*collect_args(out))
        assert done.returncode == 0, done.stderr
    assert files_of(killed) == files_of(tmp_path / "straight")


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_metaworld_expert_collects_successful_episodes(tmp_path, backend):
    env = EnvSpec("metaworld:push-v3", RenderSpec(size=32), distractor_preset("low"), episode_steps=150)
    config = CollectConfig(env=env, backend=backend, episodes=2, test_episodes=1, policy="expert")
    assert collect(config, tmp_path, show_progress=False)
    dataset = open_dataset(tmp_path)
    records = list(dataset.records("train"))
    assert all(r.meta.extra["success"] for r in records)  # the scripted expert solves push within 150 steps
    assert all(0.05 < r.masks["oracle"].mean() < 0.5 for r in records)
    assert dataset.info["fps"] == 80.0 and dataset.info["env"]["render"]["camera"] == ""
    from masklam.data.summary import render_summary, summarize
    from masklam.data.view import view

    summary = summarize(dataset)
    assert summary["splits"]["train"]["success_rate"] == 1.0 and "success 100%" in render_summary(summary)
    view(dataset, tmp_path / "push.png", episodes=2, frames=4)
    from PIL import Image

    assert Image.open(tmp_path / "push.png").size == (4 * 128, 2 * 2 * 128)


def test_checkpoint_policy_drives_collection_deterministically(tmp_path):
    import torch

    from masklam.envs.policies import mlp_actor, save_policy_checkpoint

    torch.manual_seed(0)
    actor = mlp_actor(17, 6, [32])
    save_policy_checkpoint(tmp_path / "policy.pt", actor, "dmc:cheetah-run", 17, 6, [32])
    config = tiny_config(episodes=1, test_episodes=0, policy=str(tmp_path / "policy.pt"))
    collect(config, tmp_path / "a", show_progress=False)
    record = next(open_dataset(tmp_path / "a").records("train"))
    with torch.no_grad():
        expected = actor(torch.as_tensor(record.steps["state"][:-1])).numpy()
    np.testing.assert_allclose(record.steps["action"][:-1], expected, atol=1e-6)  # cheetah's bounds are [-1, 1]
    assert "policy_sha256" in json.loads((tmp_path / "a" / "collect.json").read_text())["config"]
    with pytest.raises(UsageError, match="trained for dmc:cheetah-run, not dmc:walker-walk"):
        env = EnvSpec("dmc:walker-walk", RenderSpec(size=32), episode_steps=5)
        collect(CollectConfig(env=env, episodes=1, test_episodes=0, policy=str(tmp_path / "policy.pt")), tmp_path / "b", show_progress=False)
    assert not (tmp_path / "b").exists()


def test_action_noise_is_seeded_and_clipped(tmp_path):
    collect(tiny_config(episodes=1, test_episodes=0, action_noise=2.0), tmp_path / "noisy", show_progress=False)
    collect(tiny_config(episodes=1, test_episodes=0), tmp_path / "clean", show_progress=False)
    noisy = next(open_dataset(tmp_path / "noisy").records("train")).steps["action"][:-1]
    clean = next(open_dataset(tmp_path / "clean").records("train")).steps["action"][:-1]
    assert np.abs(noisy).max() <= 1.0 and (np.abs(noisy) == 1.0).mean() > 0.2  # big noise saturates at the bounds
    assert not np.array_equal(noisy, clean)


def test_rank_comes_from_a_slurm_array(monkeypatch):
    from masklam.ranks import rank_and_world_size

    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    assert rank_and_world_size(None, None, slurm_array=True) == (1, 3)
    assert rank_and_world_size(None, None) == (0, 1)  # training worlds ignore Slurm arrays
    with pytest.raises(UsageError, match="outside world size"):
        rank_and_world_size(3, 3)
