"""Signals read from the adapters' own weights: gate sizes and rank magnitudes (no hooks, no history)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from dynlora.core.layer import LoraLayer
from dynlora.observe.scores import RunningScores


class GateMagnitude(RunningScores):
    """Sum of each module's per-rank gates |c| (needs gated adapters); the current value, not a history."""

    def attach(self, layers: Mapping[str, LoraLayer]) -> None:
        if any(layer.gate is None for layer in layers.values()):
            raise ValueError("the gate score needs adapters with per-rank gates")

    def step(self, layers: Mapping[str, LoraLayer]) -> None:
        # on the device
        self.raw = {n: layer.live_slots(layer.gate.detach()).abs().sum() for n, layer in layers.items()}


def rank_magnitude(layer: LoraLayer) -> torch.Tensor:
    """(r,) |A_i| * |B_:,i| * |c_i|: a rank's size in the update, when no sensitivity is tracked."""
    size = layer.live_slots(layer.lora_A.detach()).norm(dim=1) * layer.live_slots(layer.lora_B.detach(), 1).norm(dim=0)
    return size * layer.live_slots(layer.gate.detach()).abs() if layer.gate is not None else size


def gate_summary(gates: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """Per module: min / mean / max gate and the ranks under 0.1."""
    stats = {}
    for name, values in gates.items():
        c = torch.tensor([float(v) for v in values], dtype=torch.float32)
        stats[name] = {"min": float(c.min()) if c.numel() else 0.0, "mean": float(c.mean()) if c.numel() else 0.0,
                       "max": float(c.max()) if c.numel() else 0.0, "low": int((c < 0.1).sum())}
    return stats


def gate_stats(layers: Mapping[str, LoraLayer]) -> dict[str, dict[str, float]]:
    """``gate_summary`` of the adapters' current gates (ungated adapters count as empty)."""
    return gate_summary({n: layer.live_slots(layer.gate.detach()).tolist() if layer.gate is not None else []
                         for n, layer in layers.items()})
