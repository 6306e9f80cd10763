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
