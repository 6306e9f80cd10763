import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    # Two long training jobs share the machine's cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_batch(batch: int = 4, size: int = 32, stack: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random uint8 frames, masks covering about a third of the pixels, half the rows labelled."""
    g = torch.Generator().manual_seed(seed)

    def frames(*shape):
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)

    def masks(*shape):
        return (torch.rand(shape, generator=g) < 0.3).to(torch.uint8)

    labelled = torch.arange(batch) % 2 == 0
    action = torch.randn(batch, 2, generator=g)
    action[~labelled] = float("nan")  # as the loader stores unlabelled actions
    return {
        "obs": frames(batch, stack, size, size, 3),
        "future": frames(batch, stack, size, size, 3),
        "next": frames(batch, size, size, 3),
        "obs_mask": masks(batch, stack, size, size),
        "future_mask": masks(batch, stack, size, size),
        "next_mask": masks(batch, size, size),
        "action": action,
        "labelled": labelled,
        # LAOM-Labels' separate labelled batch
        "labelled_obs": frames(2, stack, size, size, 3),
        "labelled_future": frames(2, stack, size, size, 3),
        "labelled_action": torch.randn(2, 2, generator=g),
    }


@pytest.fixture
def make_batch():
    return synthetic_batch
