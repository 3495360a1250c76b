"""Per-rank sensitivity ``|theta * grad|`` of each adapter, EMA-smoothed (as AdaLoRA does)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from dynlora.core.layer import LoraLayer


def follow_ranks(values: torch.Tensor, keep: Sequence[int] | torch.Tensor, grow: int) -> torch.Tensor:
    """(k + grow,) per-rank values after a resize: kept ranks keep theirs, new ranks get the kept mean.

    A fresh rank (zero B) would otherwise score 0 and be the first one cut.
    """
    index = torch.as_tensor(keep, dtype=torch.long, device=values.device)
    kept = values.index_select(0, index)
    fill = kept.mean() if kept.numel() else kept.new_zeros(())
    return torch.cat([kept, fill.expand(grow)])


# how a module's score comes from its ranks' scores: the sum (a module's total sensitivity), the mean, or the
# minimum (its weakest rank: whether every rank it holds is needed, i.e. whether one more could help)
POOLS = ("sum", "mean", "min")
# how a rank's score comes from its elements' |theta * grad|: their sum (the rank's whole sensitivity), or their
# mean over A's row and over B's column (AdaLoRA's triplet score, which does not grow with a module's width)
ELEMENTS = ("sum", "mean")


def _pooled(values: torch.Tensor, pool: str) -> float:
    if not values.numel():
        return 0.0
    return float(values.sum() if pool == "sum" else values.mean() if pool == "mean" else values.min())


def _normalised(raw: Mapping[str, float]) -> dict[str, float]:
    total = sum(raw.values())
    return {n: (v / total if total > 0 else 1.0 / len(raw)) for n, v in raw.items()}


class Sensitivity:
    """Per-rank sensitivity ``|theta * grad|`` of each adapter, smoothed by an EMA (as AdaLoRA does).

    For rank i of a module: ``sum |A[i] * dA[i]| + sum |B[:, i] * dB[:, i]|`` (``elements="mean"``: the
    means, AdaLoRA's triplet score; + ``|c_i * dc_i|`` with a gate, AdaLoRA's ``E``), read once per
    optimizer step. ``I <- beta * I + (1 - beta) * s``; with ``uncertainty`` also
    ``U <- beta_u * U + (1 - beta_u) * |s - I|`` and the score is ``I * U``. A module's score pools its
    ranks' scores (``pool``: sum, mean or min). ``follow`` follows a resize: kept ranks keep their history,
    new ranks start at the mean of the kept ones (so a fresh rank, whose B is zero, is not the first one
    pruned).
    """

    def __init__(self, beta: float = 0.85, uncertainty: bool = False, beta_u: float = 0.85,
                 pool: str = "sum", elements: str = "sum") -> None:
        for name, value in (("beta", beta), ("beta_u", beta_u)):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        if elements not in ELEMENTS:
            raise ValueError(f"elements must be one of {', '.join(ELEMENTS)}, got {elements!r}")
        self.beta, self.beta_u, self.uncertainty, self.pool = beta, beta_u, uncertainty, pool
        self.elements = elements
        self.ema: dict[str, torch.Tensor] = {}
        self.unc: dict[str, torch.Tensor] = {}

    def attach(self, layers: Mapping[str, LoraLayer]) -> None:
        for name, layer in layers.items():
            self.ema.setdefault(name, torch.zeros(layer.rank))
            self.unc.setdefault(name, torch.zeros(layer.rank))

    @torch.no_grad()
    def step(self, layers: Mapping[str, LoraLayer]) -> None:
        for name, layer in layers.items():
            if layer.lora_A.grad is None or layer.lora_B.grad is None or layer.rank == 0:
                continue
            a, ga = layer.live_slots(layer.lora_A), layer.live_slots(layer.lora_A.grad)  # (r, in)
            b, gb = layer.live_slots(layer.lora_B, 1), layer.live_slots(layer.lora_B.grad, 1)  # (out, r)
            if self.elements == "mean":  # AdaLoRA's triplet score: the mean over A's row plus over B's column
                s = (a * ga).abs().mean(1) + (b * gb).abs().mean(0)  # (r,)
            else:  # the rank's whole sensitivity: wider modules' ranks weigh more
                s = (a * ga).abs().sum(1) + (b * gb).abs().sum(0)  # (r,)
            if layer.gate is not None and layer.gate.grad is not None:
                s = s + (layer.live_slots(layer.gate) * layer.live_slots(layer.gate.grad)).abs()
            s = s.detach().float()  # stays on the device: no host sync per module and step
            self.ema[name] = self.beta * self.ema[name].to(s.device) + (1 - self.beta) * s
            if self.uncertainty:  # U is read only then: four fewer small kernels per module and step
                unc = self.unc[name].to(s.device)
                self.unc[name] = self.beta_u * unc + (1 - self.beta_u) * (s - self.ema[name]).abs()

    def rank_scores(self, name: str) -> torch.Tensor:
        """(r,) importance of each rank of one module."""
        return self.ema[name] * self.unc[name] if self.uncertainty else self.ema[name]

    def scores(self) -> dict[str, float]:
        """Module scores (its ranks' scores pooled: sum, mean or min), normalised to sum to 1."""
        return _normalised({n: _pooled(self.rank_scores(n), self.pool) for n in self.ema})

    def scores_after(self, resizes: Mapping[str, Any]) -> dict[str, float]:
        """What ``scores()`` will be once ``resizes`` (name -> ``Resize``) are applied and followed."""
        return _normalised({n: _pooled(self.rank_scores_after(n, list(resizes[n].keep), resizes[n].grow)
                                       if n in resizes else self.rank_scores(n), self.pool) for n in self.ema})

    def follow(self, name: str, keep: Sequence[int] | torch.Tensor, grow: int) -> None:
        """Follow a resize of module ``name`` (``follow_ranks`` on both EMAs)."""
        for table in (self.ema, self.unc):
            table[name] = follow_ranks(table[name], keep, grow)

    def rank_scores_after(self, name: str, keep: Sequence[int], grow: int) -> torch.Tensor:
        """What ``rank_scores(name)`` will be once a resize (keep, grow) has been applied."""
        ema = follow_ranks(self.ema[name], keep, grow)
        return ema * follow_ranks(self.unc[name], keep, grow) if self.uncertainty else ema

    def state_dict(self) -> dict[str, Any]:
        return {"ema": {n: t.cpu().tolist() for n, t in self.ema.items()},
                "unc": {n: t.cpu().tolist() for n, t in self.unc.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ema = {n: torch.tensor(v, dtype=torch.float32) for n, v in state["ema"].items()}
        self.unc = {n: torch.tensor(v, dtype=torch.float32) for n, v in state["unc"].items()}

    def detach(self) -> None:
        """No hooks to remove."""
