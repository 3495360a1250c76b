"""Adapter tensors that an engine shards (FSDP2's ``fully_shard`` makes each parameter a ``DTensor``).

dynlora reads and rewrites a layer's rank slots between steps. A sharded tensor is read whole (an all-gather
that every process runs, in the same order, as every process runs the same decisions) and written back as
each process's own shard. Without ``torch.distributed.tensor`` loaded no tensor can be sharded, so the check
costs nothing then.
"""

from __future__ import annotations

import sys

import torch


def is_sharded(t: torch.Tensor) -> bool:
    """Whether ``t`` is a ``DTensor``."""
    module = sys.modules.get("torch.distributed.tensor")
    cls = getattr(module, "DTensor", None) if module is not None else None
    return cls is not None and isinstance(t, cls)


def whole(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or the whole of a sharded ``t`` (gathered)."""
    return t.full_tensor() if is_sharded(t) else t


def like(value: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``value`` (a whole tensor, the same in every process) sharded as ``reference`` is, or itself when
    ``reference`` is not sharded."""
    if not is_sharded(reference):
        return value
    from torch.distributed.tensor import distribute_tensor

    # every process holds the same whole value (the same decisions, the same file): each cuts its own shard,
    # with no scatter from process 0
    return distribute_tensor(value, reference.device_mesh, reference.placements, src_data_rank=None)


@torch.no_grad()
def write(target: torch.Tensor, value: torch.Tensor) -> None:
    """Copy the whole ``value`` into ``target`` in place: into each process's shard of a sharded one."""
    if is_sharded(target):
        target.to_local().copy_(like(value, target).to_local())
    else:
        target.copy_(value)


def gather_whole(model: torch.nn.Module) -> None:
    """After training under FSDP2: every sharded module of ``model`` all-gathers its parameters and keeps them
    whole (``FSDPModule.unshard``, a collective every process runs), so that one process alone can then read
    and write them (the finished run's files)."""
    module = sys.modules.get("torch.distributed.fsdp")
    fsdp_module = getattr(module, "FSDPModule", None) if module is not None else None
    if fsdp_module is None:
        return
    for m in model.modules():
        if isinstance(m, fsdp_module):
            m.unshard()
