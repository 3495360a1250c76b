"""Optimizer surgery: the one place that fixes optimizer state after a rank change.

Every method (l1ra, adaptive, any later one) resizes through ``LoraLayer.resize`` and then calls
``remap_optimizer_state`` with the returned records. Surviving ranks keep their moments bit for bit;
new ranks start from zero moments; pruned ranks' moments are dropped. Scalar state (Adam's ``step``)
is kept as it is.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from dynlora.layer import RankChange


def unwrap_optimizer(optimizer: object) -> torch.optim.Optimizer:
    """The torch optimizer under accelerate's ``AcceleratedOptimizer`` (or any ``.optimizer`` chain)."""
    # AcceleratedOptimizer subclasses Optimizer but keeps the real state on ``.optimizer``
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"not a torch optimizer: {type(optimizer).__name__}")
    return optimizer


def _remap(value: torch.Tensor, change: RankChange) -> torch.Tensor:
    keep = change.keep.to(value.device)
    kept = value.index_select(change.dim, keep)
    shape = list(value.shape)
    shape[change.dim] = change.grow
    return torch.cat([kept, value.new_zeros(shape)], change.dim)


def remap_optimizer_state(optimizer: object | None, changes: Iterable[RankChange]) -> None:
    """Re-index per-element optimizer state of each changed parameter along its rank dimension.

    A state tensor is per-element when it has the parameter's number of dimensions (Adam's
    ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``; SGD's ``momentum_buffer``). Anything else
    (``step``) is left alone.
    """
    if optimizer is None:
        return
    state = unwrap_optimizer(optimizer).state
    for change in changes:
        entry = state.get(change.param)
        if not entry:
            continue
        new_shape = change.param.shape
        for key, value in list(entry.items()):
            if not torch.is_tensor(value) or value.dim() != len(new_shape) or value.dim() == 0:
                continue
            remapped = _remap(value, change)
            if remapped.shape != new_shape:
                raise RuntimeError(f"optimizer state {key!r} has shape {tuple(value.shape)}, cannot follow "
                                   f"a resize to {tuple(new_shape)}")
            entry[key] = remapped
