"""Sharding work across ``torchrun`` ranks (one rank per GPU, or CPU ranks with gloo).

Under ``torchrun --nproc_per_node=N`` every rank gets every N-th micrograph, picks it on its own device
(``cuda:LOCAL_RANK`` when GPUs are used) and writes its per-micrograph files; after a barrier rank 0
writes the files that list everything. Without torchrun this is a no-op (rank 0 of 1).
"""
from __future__ import annotations

import os


def rank_world():
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_distributed() -> bool:
    return rank_world()[1] > 1


def init(device: str = "auto") -> str:
    """Initialise the process group when under torchrun; returns the device string for this rank."""
    if not is_distributed():
        return device
    import torch
    import torch.distributed as dist

    use_cuda = device != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        from datetime import timedelta

        # generous: other ranks wait in a collective while rank 0 validates or writes list files
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(hours=1))
    if use_cuda and device in ("auto", "cuda"):
        return f"cuda:{local_rank()}"
    ids = [d.strip() for d in device.split(",") if d.strip()]
    if ids and all(d.isdigit() for d in ids):  # e.g. "0,1" from RELION's gpu parameter
        return f"cuda:{ids[local_rank() % len(ids)]}"  # without CUDA, select_device says so clearly
    return device


def shard(items: list) -> list:
    rank, world = rank_world()
    return list(items)[rank::world]


def barrier():
    if is_distributed():
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()


def gather_objects(obj) -> list:
    """All ranks' ``obj`` in rank order (just ``[obj]`` without torchrun)."""
    if not is_distributed():
        return [obj]
    import torch.distributed as dist

    out = [None] * rank_world()[1]
    dist.all_gather_object(out, obj)
    return out


def finish():
    if is_distributed():
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
