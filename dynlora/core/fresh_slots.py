"""Adam's bias correction per rank: a rank grown in the middle of a run steps as a fresh Adam would.

Adam keeps one step count per tensor. ``core.surgery`` gives a grown rank zero moments, but the
tensor's count stays, so the rank's bias correction is already about 1 and its first updates are about
``(1 - b1) g / sqrt((1 - b2) g^2)``, over three times the learning rate (measured on a layer grown at
step 1000: 2.5x to 3.8x over its first 20 steps; ``bench/fresh_ranks.py``). ``FreshSlots`` remembers,
for every slot (an index along the rank dimension) of every resized tensor, the tensor's step count
when the slot was born, and after each optimizer step replaces the young slots' update by the one their
own count gives:

    what torch applied:  lr * m / (1 - b1^t) / (sqrt(v) / sqrt(1 - b2^t) + eps)
    a fresh Adam's:      lr * m / (1 - b1^s) / (sqrt(v) / sqrt(1 - b2^s) + eps),   s = t - born

``m`` and ``v`` are the moments after the step, so weight decay (coupled or decoupled), AMSGrad and
``maximize`` are whatever the optimizer did; only the bias correction changes. A slot that was there
from the start (born 0) gets a zero correction. The correction runs before any later step hook
(``core.own_lr``'s rescale must be installed after it), and stays on the device (no host sync).

The other option, moments of a new rank seeded from the kept ranks' second moments, keeps the tensor's
count but makes a new rank's step size depend on its neighbours' gradients: a new rank's A row, whose
gradient starts at 0 (its B column is 0), then moves far slower than a fresh Adam's would.

Optimizers without Adam's state (``exp_avg``, ``exp_avg_sq``, ``betas``, ``eps``) are left alone:
SGD has no bias correction, and zero momentum is what a fresh SGD starts with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dynlora.core.layer import RankChange
from dynlora.core.sharded import is_sharded, like, whole
from dynlora.core.surgery import unwrap_optimizer

# a slot older than this (in its tensor's Adam steps) is corrected by less than float32 can show for
# the usual betas (0.999 ** 30000 = 9e-14): it needs no correction and is no longer tracked
OLD_ENOUGH = 30000


@dataclass
class _Births:
    param: nn.Parameter
    dim: int  # the rank dimension
    born: torch.Tensor  # (r,) float32 on the parameter's device: the tensor's step count when each slot was born


def _step_count(state: Mapping[str, Any] | None) -> float:
    """The tensor's Adam step count (0 before its first step)."""
    if not state or "step" not in state:
        return 0.0
    step = state["step"]
    return float(step) if torch.is_tensor(step) else float(step)


class FreshSlots:
    """Birth steps of grown ranks, and the optimizer hook that gives them their own bias correction."""

    def __init__(self) -> None:
        self.births: dict[int, _Births] = {}
        self._optimizer: torch.optim.Optimizer | None = None
        self._handle: Any = None

    # ---- following resizes -------------------------------------------------------------------
    def follow(self, optimizer: object | None, changes: Iterable[RankChange]) -> None:
        """After ``remap_optimizer_state``: kept slots keep their birth step, grown ones are born now.

        Reads each changed tensor's step count once (a resize is rare); a tensor whose slots are all old
        enough stops being tracked.
        """
        opt = unwrap_optimizer(optimizer) if optimizer is not None else None
        for change in changes:
            old = self.births.pop(id(change.old), None)
            state = opt.state.get(change.param) if opt is not None else None
            step = _step_count(state)
            device = change.param.device
            keep = change.keep.to(device)
            kept = (old.born.index_select(0, keep) if old is not None
                    else torch.zeros(keep.numel(), dtype=torch.float32, device=device))
            # grown slots are born now; so are the dead slots after them within a fixed capacity (zero moments)
            fresh = change.param.shape[change.dim] - keep.numel()
            born = torch.cat([kept, torch.full((fresh,), step, dtype=torch.float32, device=device)])
            if born.numel() and float(step - born.max()) < OLD_ENOUGH:
                self.births[id(change.param)] = _Births(change.param, change.dim, born)

    # ---- the optimizer hook ------------------------------------------------------------------
    def install(self, optimizer: object | None) -> None:
        """Correct young slots after every step of ``optimizer`` (None: remove the hook)."""
        self.close()
        if optimizer is not None:
            self._optimizer = unwrap_optimizer(optimizer)
            self._handle = self._optimizer.register_step_post_hook(self._after)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = None
        self._optimizer = None

    @torch.no_grad()
    def _after(self, optimizer: object, args: object, kwargs: object) -> None:
        if not self.births or self._optimizer is None:
            return
        for group in self._optimizer.param_groups:
            if "betas" not in group or "eps" not in group:
                continue
            for p in group["params"]:
                births = self.births.get(id(p))
                if births is None or p.grad is None:
                    continue
                self._correct(p, births, self._optimizer.state.get(p), group)

    @staticmethod
    def _correct(p: nn.Parameter, births: _Births, state: Mapping[str, Any] | None,
                 group: Mapping[str, Any]) -> None:
        if not state or "exp_avg" not in state or "exp_avg_sq" not in state:
            return
        b1, b2 = (float(b) for b in group["betas"])
        eps = float(group["eps"])
        t = torch.as_tensor(whole(state["step"]), dtype=torch.float32, device=births.born.device)
        shape = [1] * p.dim()
        shape[births.dim] = -1
        s = (t - births.born).clamp(min=1).reshape(shape)  # each slot's own count, broadcast along its dim
        m = state["exp_avg"]
        v = state["max_exp_avg_sq"] if group.get("amsgrad") and "max_exp_avg_sq" in state else state["exp_avg_sq"]
        if is_sharded(p):  # elementwise: each process corrects its own shard, its slots' counts sharded alike
            s = like(s.expand(p.shape).contiguous(), p).to_local()
            p, m, v = p.to_local(), m.to_local(), v.to_local()
        root = v.sqrt()
        applied = m / ((1 - b1 ** t) * (root / torch.sqrt(1 - b2 ** t) + eps))
        fresh = m / ((1 - b1 ** s) * (root / torch.sqrt(1 - b2 ** s) + eps))
        delta = (applied - fresh) * group["lr"]
        p.add_(-delta if group.get("maximize") else delta)

    # ---- checkpoints -------------------------------------------------------------------------
    def state_dict(self, params: Mapping[str, nn.Parameter]) -> dict[str, list[float]]:
        """Birth steps by parameter name (``params``: name -> parameter) of the tracked tensors."""
        by_id = {id(p): name for name, p in params.items()}
        return {by_id[i]: b.born.cpu().tolist() for i, b in self.births.items() if i in by_id}

    def load_state_dict(self, state: Mapping[str, list[float]], params: Mapping[str, nn.Parameter],
                        dims: Mapping[str, int]) -> None:
        """Birth steps back onto ``params`` (name -> parameter; ``dims``: name -> rank dimension)."""
        self.births = {}
        for name, born in state.items():
            p = params[name]
            values = torch.tensor(born, dtype=torch.float32, device=p.device)
            if values.numel() != p.shape[dims[name]]:
                raise ValueError(f"{name}: {values.numel()} birth steps for a rank of {p.shape[dims[name]]}")
            self.births[id(p)] = _Births(p, dims[name], values)
