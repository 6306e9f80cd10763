from pathlib import Path

import pytest

from masklam.data.collect import CollectConfig, collect
from masklam.envs.spec import EnvSpec, RenderSpec, distractor_preset


def tiny_dataset(root: Path, backend: str = "webdataset", chunk_steps: int = 0, steps: int = 10) -> Path:
    env = EnvSpec("dmc:cheetah-run", RenderSpec(size=32), distractor_preset("low"), episode_steps=steps)
    config = CollectConfig(env=env, backend=backend, episodes=3, test_episodes=1, episodes_per_shard=1, chunk_steps=chunk_steps, seed=3)
    collect(config, root, show_progress=False)
    return root


@pytest.fixture(scope="module")
def dataset_factory(tmp_path_factory):
    """A fresh copy of a tiny collected dataset per call (tests add mask sources to it)."""
    import shutil

    made: dict[tuple, Path] = {}

    def make(backend: str = "webdataset", chunk_steps: int = 0, steps: int = 10) -> Path:
        """``steps`` per episode: fewer for segmenters that encode every frame at 1024 px (Ultralytics)."""
        key = (backend, chunk_steps, steps)
        if key not in made:
            made[key] = tiny_dataset(tmp_path_factory.mktemp("segment-data") / "data", backend, chunk_steps, steps)
        copy = tmp_path_factory.mktemp("copy") / "data"
        shutil.copytree(made[key], copy)
        return copy

    return make


@pytest.fixture(scope="module")
def small_sam():
    """A tiny SAM's architecture (random weights: for plumbing tests only, never for mask quality)."""
    pytest.importorskip("segment_anything", reason="the sam extra is not installed")
    from masklam.segment.sam import SamArchitecture

    return SamArchitecture(
        image_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, window_size=2, global_attn_indexes=(1,), decoder_depth=2, decoder_mlp_dim=64
    )


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory, small_sam) -> Path:
    """A checkpoint of the tiny SAM, seeded."""
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "sam_small.pth"
    torch.save(small_sam.build().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def pil_restored():
    """Tests that build Ultralytics models import ultralytics, which patches PIL.Image.open for the whole
    process (changing how other tests' corrupt images fail): their modules use this to undo it."""
    from PIL import Image

    reader = Image.open
    yield
    Image.open = reader


@pytest.fixture(scope="session")
def random_mobile_sam(tmp_path_factory) -> Path:
    """MobileSAM with random weights (plumbing only), saved under its official file name."""
    import torch
    from ultralytics.models.sam.build import build_mobile_sam

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mobile") / "mobile_sam.pt"
    torch.save(build_mobile_sam().state_dict(), path)
    return path
