"""torch.distributed helpers: identical decisions in every process, and a DDP wrapper that follows resizes.

dynlora runs data parallel through the HF Trainer (``torchrun`` or ``accelerate launch``); the
Trainer wraps the model in ``DistributedDataParallel``. Two things DDP does not expect happen here:

- importance signals measured on each process's own micro-batches (output norms) differ between
  processes, so every score is averaged across processes before a method decides;
- a resize installs new Parameter objects and a switch changes ``requires_grad``; DDP's reducer
  holds the parameter list it was built with, so the wrapper is rebuilt (``rewrap``) before the next
  forward. The rebuild broadcasts rank 0's parameters, so ``check_replicas`` compares a checksum of
  every process's adapter state *before* that, after every event: a divergence is an error, never
  silently papered over.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dynlora.core.sharded import whole
from dynlora.errors import DynloraError


def world_size() -> int:
    """Number of processes (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def launched_processes() -> int:
    """The processes a launcher started (torchrun's ``WORLD_SIZE``; 1 without one), known before the process
    group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True in the process that writes files (rank 0, or the only process; before the process group
    exists, torchrun's ``RANK`` says which)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    """Wait for every process (no-op in one process)."""
    if world_size() > 1:
        dist.barrier()


def mean_across_processes(values: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of ``values`` over all processes (the tensor itself in one process)."""
    if world_size() == 1:
        return values
    total = values.detach().clone().to(_device())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return (total / world_size()).to(values.device)


def parameter_signature(model: nn.Module) -> tuple[tuple[int, bool], ...]:
    """Which Parameter objects the model holds and which train: changes when a resize or switch happens."""
    return tuple((id(p), p.requires_grad) for p in model.parameters())


def rewrap(wrapper: nn.parallel.DistributedDataParallel) -> nn.parallel.DistributedDataParallel:
    """A new DDP wrapper around the same module with the same settings (after its parameters changed)."""
    # torch >= 2.13 names the buffer flag forward_sync_buffers (broadcast_buffers is deprecated there)
    buffers = ({"forward_sync_buffers": wrapper.forward_sync_buffers} if hasattr(wrapper, "forward_sync_buffers")
               else {"broadcast_buffers": wrapper.broadcast_buffers})
    return nn.parallel.DistributedDataParallel(
        wrapper.module, device_ids=wrapper.device_ids, output_device=wrapper.output_device, **buffers,
        find_unused_parameters=wrapper.find_unused_parameters, bucket_cap_mb=wrapper.bucket_bytes_cap / 2**20,
        gradient_as_bucket_view=wrapper.gradient_as_bucket_view, static_graph=wrapper.static_graph)


def check_replicas(state: dict[str, Any], step: int) -> None:
    """Raise if any process's adapter state (trainable parameters, ranks) differs from rank 0's."""
    if world_size() == 1:
        return
    local = torch.tensor([_checksum(state)], dtype=torch.float64, device=_device())
    every = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(every, local)
    values = [float(t) for t in every]
    if any(v != values[0] for v in values):
        raise DynloraError(f"processes diverged after the event at step {step}: adapter checksums {values}")


def _checksum(state: dict[str, Any]) -> float:
    """Position-weighted sum of every tensor and number in ``state`` (float64; order-sensitive)."""
    total = 0.0
    for i, (name, value) in enumerate(sorted(state.items())):
        if isinstance(value, torch.Tensor):
            flat = whole(value.detach()).double().flatten().cpu()  # a sharded tensor: the same whole everywhere
            weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64)
            total += (i + 1) * float((flat * weights).sum()) + flat.numel()
        else:
            total += (i + 1) * float(value)
    return total


def _device() -> torch.device:
    """Where collective tensors must live: the current CUDA device for NCCL, else the CPU (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
