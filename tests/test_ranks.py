"""Which rank and which device: the mapping torchrun's environment gives each process (no GPU needed to test
the logic; docs/performance.md says what ran on one)."""

from __future__ import annotations

import pytest

from masklam.errors import UsageError
from masklam.ranks import rank_device


@pytest.mark.parametrize(
    ("device", "world_size", "local_rank", "expected"),
    [
        ("cpu", 2, 1, "cpu"),  # gloo on CPUs: every rank on the CPU
        ("cuda", 1, None, "cuda"),  # one process: the device as given
        ("cuda:1", 1, None, "cuda:1"),
        ("cuda", 4, 3, "cuda:3"),  # torchrun: each rank the GPU of its LOCAL_RANK
        ("cuda", 16, 0, "cuda:0"),  # rank 8 of two 8-GPU nodes: local rank 0 on its node
    ],
)
def test_each_rank_takes_the_gpu_of_its_local_rank(device, world_size, local_rank, expected):
    assert rank_device(device, world_size, local_rank) == expected


def test_a_fixed_gpu_or_no_local_rank_under_torchrun_is_one_line():
    with pytest.raises(UsageError, match="give device = 'cuda'"):
        rank_device("cuda:1", 2, 0)  # every rank would land on cuda:1
    with pytest.raises(UsageError, match="start them with torchrun"):
        rank_device("cuda", 2, None)
