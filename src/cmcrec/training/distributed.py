"""torchrun / DistributedDataParallel glue: the only place that knows about process groups.

``torchrun`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the rendezvous
variables; :func:`init_from_env` turns them into a :class:`RunContext` and a
process group (gloo on CPU, NCCL on GPU, one process per GPU). Outside
``torchrun`` every function here is a no-op, so the single-process path stays
plain.

What runs where under DDP (see ``docs/distributed.md``):

* every rank builds the same data, validation split and initial weights (all
  seeded by the run's seed) and DDP broadcasts rank 0's weights once more;
* each epoch every rank takes a disjoint, equally long share of the same
  shuffled permutation (:func:`cmcrec.training.trainer.epoch_batches`);
* gradients are averaged by DDP; metrics are *sums and counts* all-reduced
  here (:func:`all_reduce_sums`), never means of per-rank means;
* rank 0 alone writes logs, checkpoints and artifacts.
"""

from __future__ import annotations

import gc
import os
from dataclasses import replace

import numpy as np
import torch
import torch.distributed as dist

from cmcrec.config import RunContext
from cmcrec.errors import ConfigError


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def init_from_env(context: RunContext) -> RunContext:
    """Join the process group ``torchrun`` describes; return the context with rank filled in.

    ``--device auto`` (or ``cuda``) under ``torchrun`` means one GPU per process:
    local rank ``k`` uses ``cuda:k`` and the backend is NCCL. ``--device cpu``
    uses gloo. A single process (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) gets the
    context back unchanged.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return context
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = context.device
    if device.startswith("cuda:"):
        # Under torchrun the local rank picks the GPU; a fixed index would put every process on one card.
        raise ConfigError(f"--device {device}: under torchrun use --device cuda (or auto); local rank k uses cuda:k")
    wants_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if wants_cuda:
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available on this machine")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"local rank {local_rank} has no GPU: {torch.cuda.device_count()} visible "
                "(use --nproc-per-node <= the number of GPUs)"
            )
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    if not is_distributed():
        if wants_cuda:
            dist.init_process_group(backend="nccl", device_id=torch.device(device))
        else:
            dist.init_process_group(backend="gloo")
    return replace(context, rank=rank, world_size=world_size, device=device)


def shutdown() -> None:
    """Leave the process group (no-op outside one).

    DDP wrappers of finished trainers sit in reference cycles; collecting them
    first means their reducers release gloo/NCCL work while the group still
    exists (freed after it, at interpreter exit, gloo aborts the process now
    and then with "terminate called without an active exception").
    """
    if is_distributed():
        gc.collect()
        dist.destroy_process_group()


def wrap_model(
    model: torch.nn.Module, device: torch.device, context: RunContext, *, find_unused_parameters: bool = False
) -> torch.nn.Module:
    """DDP-wrap the module when running under ``torchrun``; the module itself otherwise.

    Args:
        model: the module, already on ``device``.
        device: this rank's device.
        context: the run context (``world_size`` decides whether to wrap).
        find_unused_parameters: let DDP skip parameters that get no gradient in
            a step. Off: every registered model, ablations included, gives every
            parameter a gradient every step (tests/test_igmc_mccl.py checks it),
            and the flag costs one extra autograd-graph traversal per step. A
            custom model that branches per batch must turn it on.

    """
    if context.world_size <= 1 or not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def broadcast_module_(model: torch.nn.Module, device: torch.device, context: RunContext) -> None:
    """Copy rank 0's parameters and buffers to every rank, in place (no-op outside a process group).

    What DDP does when it wraps a module; the trainer does it when it is built,
    so weight averaging starts from the same weights on every rank, and wraps
    the module only for the length of :meth:`Trainer.fit`.
    """
    if context.world_size <= 1 or not is_distributed():
        return
    tensors = [*model.parameters(), *model.buffers()]
    # As DDP's constructor does: every rank must hold the same tensors, or the broadcasts would pair
    # mismatched ones (a hang or an unclear error).
    shapes = [(str(t.dtype), tuple(t.shape)) for t in tensors]
    every = [None] * context.world_size
    dist.all_gather_object(every, shapes)
    for rank, theirs in enumerate(every):
        if theirs != shapes:
            raise RuntimeError(
                f"rank {rank}'s model has other parameters or buffers than rank {context.rank}'s "
                f"({len(theirs)} vs {len(shapes)} tensors): every rank must build the same model"
            )
    target = _collective_device(device)
    with torch.no_grad():
        for tensor in tensors:
            shared = tensor.detach().to(target).contiguous()
            dist.broadcast(shared, src=0)
            if shared.data_ptr() != tensor.data_ptr():
                tensor.copy_(shared)


def _collective_device(device: torch.device) -> torch.device:
    # NCCL only moves CUDA tensors; gloo is happiest with CPU ones.
    if is_distributed() and dist.get_backend() == "nccl":
        return device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sums(values: list[float], device: torch.device, context: RunContext) -> list[float]:
    """Sum each value over all ranks (float64), so metrics are exact totals, not averages of averages."""
    if context.world_size <= 1 or not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def all_gather_tensors(tensor: torch.Tensor, device: torch.device, context: RunContext) -> list[torch.Tensor]:
    """Every rank's copy of an equally shaped tensor, in rank order, on the CPU.

    Used for per-rank RNG states in checkpoints and, in tests, to compare flat
    parameter vectors across ranks. One process: ``[tensor]``.
    """
    if context.world_size <= 1 or not is_distributed():
        return [tensor.detach().cpu()]
    local = tensor.detach().to(_collective_device(device)).contiguous()
    out = [torch.empty_like(local) for _ in range(context.world_size)]
    dist.all_gather(out, local)
    return [t.cpu() for t in out]


def flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    """All parameters of ``model`` as one float64 vector ``(P,)`` on the CPU, in registration order."""
    params = [p.detach().reshape(-1).double().cpu() for p in model.parameters()]
    return torch.cat(params) if params else torch.zeros(0, dtype=torch.float64)


def rank_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed derived from ``(seed, *keys)``, e.g. ``(seed, epoch, rank)``; stable across runs."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def barrier(device: torch.device | None = None) -> None:
    """Wait for every rank (no-op outside a process group)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl" and device is not None and device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()
