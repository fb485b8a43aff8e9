"""torchrun / DistributedDataParallel glue: the only place that knows about process groups.

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_from_env`
turns them into a :class:`RunContext` and a process group (gloo on CPU, NCCL on
GPU). Outside ``torchrun`` every function here is a no-op, so the single-process
path stays plain.
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch
import torch.distributed as dist

from cmcrec.config import RunContext


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_from_env(context: RunContext) -> RunContext:
    """Join the process group ``torchrun`` describes; return the context with rank filled in."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return context
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = context.device
    wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if wants_cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not is_distributed():
        dist.init_process_group(backend="nccl" if wants_cuda else "gloo")
    return replace(context, rank=rank, world_size=world_size, device=device if wants_cuda else "cpu")


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, device: torch.device, context: RunContext) -> torch.nn.Module:
    """DDP-wrap the module when running under ``torchrun``; the module itself otherwise."""
    if context.world_size <= 1 or not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # Ablations leave whole heads unused, so DDP must tolerate parameters without gradients.
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def all_reduce_sums(values: list[float], device: torch.device, context: RunContext) -> list[float]:
    """Sum each value over all ranks (float64), so metrics are exact totals, not averages of averages."""
    if context.world_size <= 1 or not is_distributed():
        return list(values)
    reduce_device = device if device.type == "cuda" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=reduce_device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def barrier() -> None:
    if is_distributed():
        dist.barrier()
