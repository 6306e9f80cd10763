"""`masklam train lam` on a tiny collected dataset: learning, exact resume, DDP equivalence."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from masklam.configs import load_config
from masklam.data.collect import CollectConfig, collect
from masklam.envs.spec import EnvSpec, RenderSpec, distractor_preset
from masklam.errors import UsageError
from masklam.models.presets import build_lam, lam_config
from masklam.train.lam import LAMTrainConfig, release_process_group, train_lam
from masklam.train.presets import trainer_file


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lam-data")
    env = EnvSpec("dmc:cheetah-run", RenderSpec(size=32), distractor_preset("low"), episode_steps=30)
    collect(CollectConfig(env=env, episodes=4, test_episodes=1, episodes_per_shard=2, seed=1), root, show_progress=False)
    return root


def tiny_config(data: Path, method: str, *overrides: str) -> LAMTrainConfig:
    return load_config(LAMTrainConfig, trainer_file(f"{method}-tiny"), [f'data.path="{data}"', "data.batch_size=8", "log_every=5", *overrides])


def losses(run: Path, stage: str = "lam") -> list[float]:
    return [json.loads(line)["loss"] for line in (run / f"{stage}-metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lapo", "masklam", "laom", "laom-labels"])
def test_each_method_learns_on_a_tiny_dataset(tiny_data, tmp_path, method):
    train_lam(tiny_config(tiny_data, method, "optim.steps=60", "optim.lr=1e-3"), tmp_path, show_progress=False)
    curve = losses(tmp_path)
    assert sum(curve[-3:]) / 3 < 0.8 * sum(curve[:2]) / 2, curve
    assert (tmp_path / "lam.pt").exists() and list((tmp_path / "tensorboard").iterdir())


def train_args(data: Path, out: Path) -> list[str]:
    # One thread in every run: the killed process sizes its threads afresh while this process keeps the count
    # its first command chose, and a different count sums in another order (differences of 1e-7 seen in CI).
    return [
        "--threads",
        "1",
        "train",
        "lam",
        "--data",
        str(data),
        "--out",
        str(out),
        "--trainer",
        "masklam-tiny",
        "--set",
        "optim.steps=60",
        "--set",
        "checkpoint_every=10",
        "--set",
        "data.batch_size=8",
        "--no-progress",
    ]


@pytest.mark.slow
def test_a_killed_run_resumes_exactly(masklam_cli, tiny_data, tmp_path):
    # The killed run is a real process killed with SIGKILL; resuming it and the uninterrupted run go through
    # the same command in this process (no second and third interpreter to start).
    env = dict(os.environ, MUJOCO_GL="egl")
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    command = [sys.executable, "-m", "masklam.cli", *train_args(tiny_data, killed)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "lam.pt").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    step = torch.load(killed / "lam.pt", weights_only=False)["step"]
    assert 0 < step < 60, "the kill should land mid-run"
    for run in (killed, straight):
        done = masklam_cli(*train_args(tiny_data, run))
        assert done.returncode == 0, done.stderr
    resumed, uninterrupted = torch.load(killed / "lam.pt", weights_only=False), torch.load(straight / "lam.pt", weights_only=False)
    assert resumed["step"] == uninterrupted["step"] == 60
    for name, tensor in uninterrupted["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=0, atol=0)


def test_another_config_in_the_run_folder_is_refused(tiny_data, tmp_path):
    train_lam(tiny_config(tiny_data, "lapo", "optim.steps=2"), tmp_path, show_progress=False)
    with pytest.raises(UsageError, match="another config"):
        train_lam(tiny_config(tiny_data, "lapo", "optim.steps=3"), tmp_path, show_progress=False)


def synthetic_batch(batch: int = 4, size: int = 32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    frames = lambda *shape: torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)  # noqa: E731
    masks = torch.zeros(batch, size, size, dtype=torch.uint8)
    for b in range(batch):
        masks[b, : 4 + 6 * b, : 5 + 3 * b] = 1  # different agent sizes: the halves' mask counts differ
    return {
        "obs": frames(batch, 3, size, size, 3),
        "future": frames(batch, 3, size, size, 3),
        "next": frames(batch, size, size, 3),
        "obs_mask": masks[:, None].repeat(1, 3, 1, 1),
        "future_mask": masks[:, None].repeat(1, 3, 1, 1),
        "next_mask": masks,
        "labelled_obs": frames(batch, 3, size, size, 3),
        "labelled_future": frames(batch, 3, size, size, 3),
        "labelled_action": torch.randn(batch, 6, generator=generator),
    }


def ddp_model(method: str) -> torch.nn.Module:
    # LAOM's augmentations draw per process: off, so that both runs see the same inputs.
    options = {"augment": None} if method.startswith("laom") else {}
    return build_lam(lam_config(method, "tiny", **options), action_dim=6)


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


DDP_METHODS = ("masklam", "lapo", "laom-labels")


def ddp_worker(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    half = {k: v[2 * rank : 2 * rank + 2] for k, v in synthetic_batch().items()}
    grads = {}
    for method in DDP_METHODS:  # one pair of processes for every method: starting them is the slow part
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(ddp_model(method))
        model(half)["loss"].backward()
        grads[method] = gradients(model.module)
        del model
    if rank == 0:
        torch.save(grads, out)
    release_process_group()


def test_each_rank_draws_its_own_augmentations():
    from masklam.train.lam import seed_augmentations

    draws = []
    for rank in (0, 1, 0):
        model = build_lam(lam_config("laom", "tiny"), action_dim=6)
        seed_augmentations(model, rank)
        draws.append(torch.rand(4, generator=model.generator))
    assert torch.equal(draws[0], draws[2]) and not torch.equal(draws[0], draws[1])
    fresh = build_lam(lam_config("laom", "tiny"), action_dim=6)
    assert torch.equal(torch.rand(4, generator=fresh.generator), draws[0])  # rank 0 draws as one process does


@pytest.mark.slow
def test_torchrun_trains_with_two_gloo_processes_and_rank_0_writes(tiny_data, tmp_path):
    """The real launcher: torchrun starts two CPU processes (gloo); rank 0 alone writes the run folder."""
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASKLAM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "masklam.cli"]
    args = [
        "train",
        "lam",
        "--data",
        str(tiny_data),
        "--trainer",
        "laom-tiny",
        "--set",
        "optim.steps=4",
        "--set",
        "log_every=1",
        "--out",
        str(run),
        "--no-progress",
    ]
    done = subprocess.run([*launch, *args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [json.loads(line)["step"] for line in (run / "lam-metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]  # once each
    assert (run / "lam.pt").exists()


@pytest.mark.slow
def test_two_process_ddp_gives_the_gradients_of_one_process(tmp_path):
    torch.multiprocessing.spawn(ddp_worker, args=(str(tmp_path / "init"), str(tmp_path / "grads.pt")), nprocs=2)
    distributed = torch.load(tmp_path / "grads.pt")
    assert sorted(distributed) == sorted(DDP_METHODS)
    for method in DDP_METHODS:
        torch.manual_seed(0)
        single = ddp_model(method)
        single(synthetic_batch())["loss"].backward()
        expected = gradients(single)
        assert distributed[method].keys() == expected.keys(), method
        for name, grad in expected.items():
            torch.testing.assert_close(distributed[method][name], grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name, k=method: f"{k} {n}: {m}")


def test_the_training_bar_ends_on_the_last_steps_loss(tiny_data, tmp_path, monkeypatch):
    import masklam.train.loop as loop

    shown = []

    class Recorder:
        def __init__(self, **_):
            pass

        def update(self, _):
            pass

        def set_postfix(self, values):
            shown.append(values)

        def close(self):
            pass

    monkeypatch.setattr(loop, "tqdm", Recorder)
    result = train_lam(tiny_config(tiny_data, "lapo", "optim.steps=3", "log_every=2"), tmp_path)  # logs at step 2 only
    assert shown[-1] == {"loss": f"{result['final_loss']:.4f}"} and len(shown) == 2


def test_a_loss_that_blows_up_is_one_line_before_any_checkpoint(tiny_data, tmp_path):
    with pytest.raises(UsageError, match=r"loss became (nan|inf) between steps 1 and 5"):
        train_lam(tiny_config(tiny_data, "lapo", "optim.steps=20", "optim.lr=1e12", "log_every=5", "checkpoint_every=10"), tmp_path, show_progress=False)
    assert not (tmp_path / "lam.pt").exists()


def test_compile_trains_the_same_steps_and_saves_a_plain_checkpoint(tiny_data, tmp_path, monkeypatch):
    """compile = true (opt-in, for GPUs). Inductor took 188 s to compile the tiny LAPO on this CPU, so the test
    traces with the aot_eager backend: torch.compile's whole path (Dynamo, AOTAutograd) but no code generation."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    train_lam(tiny_config(tiny_data, "lapo", "optim.steps=3", "log_every=1", "compile=true"), tmp_path / "compiled", show_progress=False)
    train_lam(tiny_config(tiny_data, "lapo", "optim.steps=3", "log_every=1"), tmp_path / "eager", show_progress=False)
    np.testing.assert_allclose(losses(tmp_path / "compiled"), losses(tmp_path / "eager"), rtol=1e-5)
    state = torch.load(tmp_path / "compiled" / "lam.pt", weights_only=False)["model"]
    assert not any(key.startswith("_orig_mod") for key in state)  # loads into the plain model the later stages build


def test_probe_of_a_trained_run(tiny_data, tmp_path):
    from masklam.eval.probe import probe_run

    train_lam(tiny_config(tiny_data, "masklam", "optim.steps=5", "model.latent_dim=8"), tmp_path, show_progress=False)
    result = probe_run(tmp_path, str(tiny_data), windows=60, batch_size=16)
    assert result["windows"] == {"train": 60, "test": 15}
    assert 0 < result["action_nmse"] < 10 and 0 < result["in_pool_nmse"] < 10 and result["ridge"] > 0
    # A background-only dataset: the background is measured by the episode share, not by a per-state probe.
    assert result["distractor"] == {} and result["distractor_r2"] is None
    assert 0 <= result["episode_share"]["latent"] <= 1
    assert json.loads((tmp_path / "probe.json").read_text()) == result


def test_probe_of_a_run_on_shaken_and_recoloured_video(tmp_path):
    """Each distractor state on its own: the camera's pose, its motion over the window, the agent's colour."""
    from masklam.eval.probe import PROBE_VERSION, probe_run, render_probe

    data = tmp_path / "data"
    env = EnvSpec("dmc:cheetah-run", RenderSpec(size=32), distractor_preset("hard"), episode_steps=20)
    collect(CollectConfig(env=env, episodes=4, test_episodes=1, episodes_per_shard=2, seed=2), data, show_progress=False)
    train_lam(tiny_config(data, "lapo", "optim.steps=3", "model.latent_dim=8"), tmp_path / "run", show_progress=False)
    result = probe_run(tmp_path / "run", str(data), windows=60, batch_size=16)
    assert result["probe_version"] == PROBE_VERSION
    assert sorted(result["distractor"]) == ["agent_color", "camera", "camera_motion"]
    assert all(isinstance(state["r2"], float) for state in result["distractor"].values())
    assert "distractor camera_motion R²" in render_probe(result)


def test_latent_bc_labels_each_window_once_and_learns_the_same(tiny_data, tmp_path, monkeypatch):
    """The latent targets cached per window are the ones the frozen IDM gives batch by batch: same losses."""
    import masklam.train.stages as stages
    from masklam.train.loop import OptimConfig

    train_lam(tiny_config(tiny_data, "masklam", "optim.steps=3", "model.latent_dim=8"), tmp_path / "lam", show_progress=False)
    stage = stages.StageConfig(preset="tiny", batch_size=8, log_every=1, optim=OptimConfig(steps=6, lr=1e-3))
    labelled, original = [], stages.latent_targets

    def recorded(*args, **kwargs):
        labelled.append(original(*args, **kwargs))
        return labelled[-1]

    monkeypatch.setattr(stages, "latent_targets", recorded)
    for cache in (True, False):
        run = tmp_path / f"bc-{cache}"
        shutil.copytree(tmp_path / "lam", run)
        monkeypatch.setattr(stages, "LABEL_CACHE_BYTES", 1 << 30 if cache else 0)
        stages.train_bc(run, stage, show_progress=False)
    cached, on_the_fly = labelled
    from masklam.data.dataset import open_dataset

    windows = sum(meta.frames - 1 for meta in open_dataset(tiny_data).index("train"))
    assert on_the_fly is None and len(cached.row) == len(cached.latents) == windows  # every window, once
    np.testing.assert_allclose(losses(tmp_path / "bc-True", "bc"), losses(tmp_path / "bc-False", "bc"), rtol=1e-4)
    assert "workers" not in json.loads((tmp_path / "bc-True" / "bc-config.json").read_text())  # run folders from before it

    # Two loader processes: the windows arrive in another order, each labelled as in one process; a recorded setting.
    run = tmp_path / "bc-workers"
    shutil.copytree(tmp_path / "lam", run)
    monkeypatch.setattr(stages, "LABEL_CACHE_BYTES", 1 << 30)
    stages.train_bc(run, dataclasses.replace(stage, workers=2), show_progress=False)
    by_window = labelled[-1]
    assert by_window.row.keys() == cached.row.keys() and list(by_window.row) != list(cached.row)  # another order
    for key, row in cached.row.items():
        torch.testing.assert_close(by_window.latents[by_window.row[key]], cached.latents[row], rtol=1e-5, atol=1e-6)
    assert json.loads((run / "bc-config.json").read_text())["workers"] == 2 and np.isfinite(losses(run, "bc")).all()


@pytest.mark.slow
def test_bc_then_decoder_on_a_label_budget(tiny_data, tmp_path):
    from masklam.train.loop import OptimConfig
    from masklam.train.stages import StageConfig, labelled_latents, train_bc, train_decoder

    train_lam(tiny_config(tiny_data, "masklam", "optim.steps=10", "model.latent_dim=16"), tmp_path, show_progress=False)
    stage = StageConfig(preset="tiny", batch_size=8, labelled=40, log_every=5, optim=OptimConfig(steps=40, lr=1e-3))
    train_bc(tmp_path, stage, show_progress=False)
    curve = losses(tmp_path, "bc")
    assert curve[-1] < curve[0], curve
    result = train_decoder(tmp_path, stage, show_progress=False)
    assert result["labelled_transitions"] == 40 and (tmp_path / "decoder.pt").exists()
    # A 10-step LAM's latents say little of the action, so the decoder's curve is flat here (a first-versus-last
    # check passed or failed with which 40 transitions were drawn); that the decoder learns is tested in
    # tests/models/test_lam_training.py on latents that hold the action.
    assert np.isfinite(losses(tmp_path, "decoder")).all()
    latents, actions = labelled_latents(tmp_path, stage)
    assert latents.shape == (40, 16) and torch.isfinite(actions).all()
    with pytest.raises(UsageError, match="has only"):
        labelled_latents(tmp_path, StageConfig(preset="tiny", labelled=10**6))

    from masklam.eval.rollout import evaluate_run
    from masklam.train.stages import train_action_bc

    train_action_bc(tmp_path, stage, show_progress=False)
    evaluation = evaluate_run(tmp_path, episodes=2, steps=10, show_progress=False)
    assert evaluation["bc_actions_return"] is not None and evaluation["collector_return"] is not None
    assert evaluation["episodes"] == 2 and len(evaluation["returns"]) == 2 and np.isfinite(evaluation["return_mean"])
    assert json.loads((tmp_path / "evaluate.json").read_text()) == evaluation
    assert evaluation == evaluate_run(tmp_path, episodes=2, steps=10, show_progress=False)  # deterministic
    # The reference's returns are kept under its weights' hash and the episodes, and read back by the next
    # evaluation of the same network and episodes (here made recognisable); other episodes roll it out again.
    kept = tmp_path / "bc-actions-evaluate.json"
    saved = json.loads(kept.read_text())
    assert np.mean(saved["returns"]) == pytest.approx(evaluation["bc_actions_return"])
    kept.write_text(json.dumps({**saved, "returns": [123.0, 125.0]}))
    assert evaluate_run(tmp_path, episodes=2, steps=10, show_progress=False)["bc_actions_return"] == 124.0
    assert evaluate_run(tmp_path, episodes=1, steps=10, show_progress=False)["bc_actions_return"] == pytest.approx(saved["returns"][0])
    assert json.loads(kept.read_text())["key"]["episodes"] == 1


def test_no_in_pool_label_reaches_a_stage_that_learns_from_actions(tiny_data, tmp_path, monkeypatch):
    """LAOM-Labels' action head, the decoder and BC on true actions never read the actions of the probe's in-pool
    episodes; the probe does, and scores in-pool on exactly those episodes."""
    import masklam.train.loader as loader
    from masklam.data.dataset import open_dataset
    from masklam.eval.probe import probe_run
    from masklam.train.loop import OptimConfig
    from masklam.train.stages import StageConfig, labelled_latents, labelled_transitions, train_action_bc, train_bc, train_decoder

    dataset = open_dataset(tiny_data)
    in_pool = dataset.in_pool_episodes()
    assert in_pool == {3}  # 4 labelled train episodes: the last fifth, rounded up
    read: list[tuple[str, int, bool]] = []  # (split, episode, actions read) of every record cut into windows
    cut = loader.record_windows

    def spy(record, spec, action_shape, rng):
        read.append((record.meta.split, record.meta.episode, "action" in record.steps))
        return cut(record, spec, action_shape, rng)

    monkeypatch.setattr(loader, "record_windows", spy)
    train_lam(tiny_config(tiny_data, "laom-labels", "optim.steps=6", "model.latent_dim=8"), tmp_path, show_progress=False)
    stage = StageConfig(preset="tiny", batch_size=8, labelled=0, log_every=5, optim=OptimConfig(steps=4, lr=1e-3))
    train_bc(tmp_path, stage, show_progress=False)
    train_decoder(tmp_path, stage, show_progress=False)
    train_action_bc(tmp_path, stage, show_progress=False)
    learnt = {(split, episode) for split, episode, actions in read if actions}
    assert ("train", 3) not in learnt and {("train", 0), ("train", 1), ("train", 2)} <= learnt
    assert ("train", 3) in {(split, episode) for split, episode, _ in read}  # its frames are still trained on, unlabelled
    per_episode = {meta.episode: meta.frames - 1 for meta in dataset.index("train")}
    assert labelled_transitions(str(tiny_data)) == sum(n for episode, n in per_episode.items() if episode not in in_pool)
    assert len(labelled_latents(tmp_path, stage)[1]) == labelled_transitions(str(tiny_data))

    read.clear()
    result = probe_run(tmp_path, str(tiny_data), windows=200, batch_size=16, show_progress=False)
    assert ("train", 3, True) in read  # the yardstick reads every label
    assert result["in_pool_episodes"] == [3] and result["in_pool_windows"] == per_episode[3]
    assert result["windows"]["train"] == sum(per_episode.values()) and 0 < result["in_pool_nmse"] < 10
    by_episode = result["action"]["test_nmse_per_episode"]  # what the report resamples, beside the seeds
    assert list(by_episode) == ["0"] and by_episode["0"] == pytest.approx(result["action_nmse"])


def test_laom_labels_without_labelled_episodes_is_refused(tmp_path):
    env = EnvSpec("dmc:cheetah-run", RenderSpec(size=32), distractor_preset("none"), episode_steps=5)
    collect(CollectConfig(env=env, episodes=2, test_episodes=0, labelled_episodes=0, seed=1), tmp_path / "data", show_progress=False)
    with pytest.raises(UsageError, match="laom-labels needs labelled episodes.*--labelled-episodes"):
        train_lam(tiny_config(tmp_path / "data", "laom-labels", "optim.steps=2"), tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()  # nothing claimed: the folder takes another method's run
    train_lam(tiny_config(tmp_path / "data", "laom", "optim.steps=2"), tmp_path / "run", show_progress=False)


def test_laom_labels_loads_its_labelled_stream_with_workers_even_when_labels_are_few(tmp_path):
    """One labelled episode against two loader processes: the labelled stream takes as many processes as it has
    labelled records, and none waits on a worker that has nothing to read."""
    env = EnvSpec("dmc:cheetah-run", RenderSpec(size=32), distractor_preset("none"), episode_steps=8)
    collect(CollectConfig(env=env, episodes=4, test_episodes=0, labelled_episodes=1, seed=1), tmp_path / "data", show_progress=False)
    config = tiny_config(tmp_path / "data", "laom-labels", "optim.steps=3", "data.workers=2", "log_every=1")
    train_lam(config, tmp_path / "run", show_progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "lam-metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3] and all(np.isfinite(row["action_loss"]) for row in rows)


@pytest.mark.slow
def test_bf16_autocast_trains(tiny_data, tmp_path):
    # The switch is meant for GPUs; CPU autocast runs the same code path.
    train_lam(tiny_config(tiny_data, "masklam", "optim.steps=30", "optim.lr=1e-3", "bf16=true"), tmp_path, show_progress=False)
    curve = losses(tmp_path)
    assert all(np.isfinite(curve)) and sum(curve[-2:]) / 2 < sum(curve[:2]) / 2, curve


def test_the_device_is_where_a_run_computes_not_a_setting(masklam_cli, tiny_data, tmp_path):
    from masklam.devices import resolve
    from masklam.train.loop import OptimConfig
    from masklam.train.stages import StageConfig, train_bc

    assert resolve("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UsageError, match="use auto, cpu, cuda"):
        resolve("gpu")
    train_lam(tiny_config(tiny_data, "lapo", "optim.steps=2", 'device="cpu"'), tmp_path, show_progress=False)
    # The same run on another device resumes (here: finds its steps done) instead of being refused.
    assert train_lam(tiny_config(tiny_data, "lapo", "optim.steps=2", 'device="auto"'), tmp_path, show_progress=False)["steps"] == 2
    stage = StageConfig(preset="tiny", batch_size=8, log_every=1, optim=OptimConfig(steps=2))
    train_bc(tmp_path, stage, show_progress=False, device="cpu")
    assert "device" not in json.loads((tmp_path / "bc-config.json").read_text())  # not recorded: any device resumes it
    if not torch.cuda.is_available():  # a CUDA device asked for on a machine without one: one line, exit 2
        for args in (
            ["probe", str(tmp_path), "--data", str(tiny_data)],
            ["evaluate", str(tmp_path)],
            ["score-actions", str(tmp_path)],
            ["train", "bc", str(tmp_path)],
        ):
            done = masklam_cli(*args, "--device", "cuda", "--no-progress")
            assert done.returncode == 2 and "torch sees no CUDA GPU here" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with `device` where one is lent)")
def test_every_stage_runs_on_a_gpu(tiny_data, tmp_path):
    from masklam.eval.probe import probe_run
    from masklam.eval.rollout import evaluate_run
    from masklam.train.loop import OptimConfig
    from masklam.train.stages import StageConfig, train_action_bc, train_bc, train_decoder

    train_lam(tiny_config(tiny_data, "masklam", "optim.steps=4", 'device="cuda"', "bf16=true"), tmp_path, show_progress=False)
    stage = StageConfig(preset="tiny", batch_size=8, labelled=40, log_every=1, optim=OptimConfig(steps=4))
    for train in (train_bc, train_decoder, train_action_bc):
        train(tmp_path, stage, show_progress=False, device="cuda")
    assert probe_run(tmp_path, str(tiny_data), windows=64, show_progress=False, device="cuda")["action_nmse"] is not None
    assert np.isfinite(evaluate_run(tmp_path, episodes=1, steps=5, show_progress=False, device="cuda")["return_mean"])
    from masklam.eval.offline import score_actions

    assert np.isfinite(score_actions(tmp_path, show_progress=False, device="cuda")["test"]["decoded_policy"])


def test_train_lam_keeps_the_models_asked_for_and_probe_reads_them(masklam_cli, tiny_data, tmp_path):
    train = ["train", "lam", "--data", str(tiny_data), "--out", str(tmp_path), "--trainer", "lapo-tiny", "--set", "optim.steps=3"]
    train += ["--set", "data.batch_size=8", "--no-progress"]
    refused = masklam_cli(*train, "--probe-at", "4")
    assert refused.returncode == 2 and "outside this run's steps 1..3" in refused.stderr and not (tmp_path / "lam.pt").exists()
    assert masklam_cli(*train, "--probe-at", "1", "--probe-at", "2").returncode == 0
    assert sorted(p.name for p in tmp_path.glob("lam-step*.pt")) == ["lam-step1.pt", "lam-step2.pt"]
    probe = ["probe", str(tmp_path), "--data", str(tiny_data), "--windows", "40", "--no-progress"]
    assert masklam_cli(*probe, "--at", "1").returncode == 0
    early = json.loads((tmp_path / "probe-step1.json").read_text())
    assert early["step"] == 1 and not (tmp_path / "probe.json").exists()
    missing = masklam_cli(*probe, "--at", "3")
    assert missing.returncode == 2 and "kept no LAM at step 3" in missing.stderr
    assert masklam_cli(*probe).returncode == 0 and json.loads((tmp_path / "probe.json").read_text())["step"] == 3
