"""``sqrt(|dA|^2 + |dB|^2)`` of each adapter's accumulated gradient, read once per optimizer step.

Gradient accumulation counts once. An adapter without a gradient (switched off) is not observed that
step. Without a decay, a module's score is the mean of its signal over the steps in which it was observed
during the current period (between two decisions: ``new_period``), or, if it was not observed since the
last decision, that of the last period in which it was. A sum over the run locked in the first
selection (the adapters that train keep adding, the others stop: 11 periodic selections with a loss
changed half-way chose 1 set), and a mean over the whole run follows a change too slowly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from dynlora.core.layer import LoraLayer
from dynlora.observe.scores import RunningScores


class GradientNorm(RunningScores):
    """Norm of each adapter's A and B gradients, once per optimizer step (its mean over the period observed)."""

    def __init__(self, decay: float | None = None) -> None:
        super().__init__(decay)
        self._seen: dict[str, int] = {}  # steps observed in the current period
        self._last: dict[str, float] = {}  # mean of the last period in which a module was observed

    def attach(self, layers: Mapping[str, LoraLayer]) -> None:
        for name in layers:
            self._raw.setdefault(name, 0.0)

    def step(self, layers: Mapping[str, LoraLayer]) -> None:
        names, norms = [], []
        for name, layer in layers.items():
            grads = [p.grad for p in (layer.lora_A, layer.lora_B) if p.grad is not None]
            if grads:
                names.append(name)
                norms.append(torch.sqrt(sum(g.detach().float().pow(2).sum() for g in grads)))
        if names:
            self.fold(dict(zip(names, torch.stack(norms).unbind())))  # stays on the device
            for name in names:
                self._seen[name] = self._seen.get(name, 0) + 1

    @property
    def raw(self) -> dict[str, float]:
        if self.decay is not None:
            return super().raw
        sums = super().raw
        return {n: sums[n] / self._seen[n] if self._seen.get(n) else self._last.get(n, 0.0) for n in sums}

    @raw.setter
    def raw(self, values: Mapping[str, float | torch.Tensor]) -> None:
        self._raw = dict(values)

    def new_period(self) -> None:
        if self.decay is not None:
            return
        self._last = self.raw
        self._raw = {name: 0.0 for name in self._raw}
        self._seen = {}

    def state_dict(self) -> dict[str, Any]:
        return {"raw": {n: float(v) for n, v in self._raw.items()}, "seen": dict(self._seen), "last": dict(self._last)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._raw = {k: float(v) for k, v in state["raw"].items()}
        self._seen = {k: int(v) for k, v in state.get("seen", {}).items()}
        self._last = {k: float(v) for k, v in state.get("last", {}).items()}
