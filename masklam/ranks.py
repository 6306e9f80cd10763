"""Which rank this process is, out of how many: from arguments, torchrun's environment or a Slurm array."""

from __future__ import annotations

import os

from masklam.errors import UsageError


def rank_and_world_size(rank: int | None, world_size: int | None, slurm_array: bool = False) -> tuple[int, int]:
    """From the arguments, else torchrun's RANK/WORLD_SIZE, else (with ``slurm_array``) a Slurm array, else (0, 1).

    A Slurm array's tasks are separate jobs: fine for splitting collection, not one training world.
    """
    env = os.environ
    if world_size is None:
        if "WORLD_SIZE" in env:
            rank, world_size = int(env.get("RANK", 0)) if rank is None else rank, int(env["WORLD_SIZE"])
        elif slurm_array and "SLURM_ARRAY_TASK_COUNT" in env:
            first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
            rank, world_size = int(env["SLURM_ARRAY_TASK_ID"]) - first if rank is None else rank, int(env["SLURM_ARRAY_TASK_COUNT"])
    rank, world_size = rank or 0, world_size or 1
    if not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is outside world size {world_size}: ranks go from 0 to world size - 1")
    return rank, world_size


def rank_device(device: str, world_size: int, local_rank: int | None) -> str:
    """The device this rank computes on. Under torchrun with CUDA each rank takes the GPU of its LOCAL_RANK
    (one process per GPU on each node); every rank on ``cuda`` alone would all land on cuda:0."""
    if world_size == 1 or not device.startswith("cuda"):
        return device
    if device != "cuda":
        raise UsageError(f"device = {device!r} with {world_size} processes: give device = 'cuda', and each rank takes the GPU of its LOCAL_RANK")
    if local_rank is None:
        raise UsageError(f"{world_size} processes on CUDA, but LOCAL_RANK is not set: start them with torchrun")
    return f"cuda:{local_rank}"


def local_rank() -> int | None:
    """torchrun's LOCAL_RANK: this process's index on its node."""
    value = os.environ.get("LOCAL_RANK")
    return None if value is None else int(value)
