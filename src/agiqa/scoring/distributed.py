"""Several scoring processes on one machine or many: `torchrun` starts them, each scores its own blocks.

`torchrun --nproc_per_node 4 -m agiqa score MODEL images/ --out scores/` gives 4 ranks; rank `r` scores blocks
`i % 4 == r` and writes their shards, rank 0 starts the output folder and writes the totals. Only barriers are
exchanged (gloo on CPUs, NCCL on GPUs); no scores travel between processes.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch

# A rank that finishes early waits at the last barrier for the slowest one: hours on a large set.
BARRIER_TIMEOUT = timedelta(days=7)


def init_from_env(device: str = "auto") -> tuple[int, int, str]:
    """(rank, world size, this rank's device) under `torchrun` (WORLD_SIZE > 1), else (0, 1, device)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda and device in ("auto", "cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=BARRIER_TIMEOUT)
    return dist.get_rank(), dist.get_world_size(), device


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
