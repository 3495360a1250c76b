"""Optimizer surgery: the one place that fixes optimizer state after a rank change.

Every rank change (whichever method decided it) goes through ``LoraLayer.resize`` and then calls
``remap_optimizer_state`` with the returned records. Surviving ranks keep their moments bit for bit;
new ranks start from zero moments; pruned ranks' moments are dropped. Scalar state (Adam's ``step``)
is kept as it is.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from dynlora.core.layer import RankChange
from dynlora.core.sharded import like, whole


def unwrap_optimizer(optimizer: object) -> torch.optim.Optimizer:
    """The torch optimizer under accelerate's ``AcceleratedOptimizer`` (or any ``.optimizer`` chain)."""
    # AcceleratedOptimizer subclasses Optimizer but keeps the real state on ``.optimizer``
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"not a torch optimizer: {type(optimizer).__name__}")
    return optimizer


def _remap(value: torch.Tensor, change: RankChange) -> torch.Tensor:
    state = whole(value)  # a sharded parameter's state is sharded alike: re-indexed whole, sharded again
    keep = change.keep.to(state.device)
    kept = state.index_select(change.dim, keep)
    shape = list(state.shape)
    # zeros for new ranks, and within a fixed capacity for the slots after them too
    shape[change.dim] = change.param.shape[change.dim] - keep.numel()
    return like(torch.cat([kept, state.new_zeros(shape)], change.dim), value)


def remap_optimizer_state(optimizer: object | None, changes: Iterable[RankChange]) -> None:
    """Hand each old parameter's optimizer slot to its successor and re-index its per-element state.

    The new parameter takes the old one's place in its param group (same group, same position) and its
    state. A state tensor is per-element when it has the parameter's number of dimensions (Adam's
    ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``; SGD's ``momentum_buffer``); it keeps the surviving
    ranks' values and gets zeros for new ranks. Anything else (``step``) is carried over as it is.
    """
    if optimizer is None:
        return
    opt = unwrap_optimizer(optimizer)
    changes = list(changes)
    successor = {id(c.old): c.param for c in changes}
    for group in opt.param_groups:
        group["params"] = [successor.get(id(p), p) for p in group["params"]]
    state = opt.state
    for change in changes:
        entry = state.pop(change.old, None)
        if not entry:
            continue
        state[change.param] = entry
        new_shape = change.param.shape
        for key, value in list(entry.items()):
            if not torch.is_tensor(value) or value.dim() != len(new_shape) or value.dim() == 0:
                continue
            remapped = _remap(value, change)
            if remapped.shape != new_shape:
                raise RuntimeError(f"optimizer state {key!r} has shape {tuple(value.shape)}, cannot follow "
                                   f"a resize to {tuple(new_shape)}")
            entry[key] = remapped
