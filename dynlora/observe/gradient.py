"""``sqrt(|dA|^2 + |dB|^2)`` of each adapter's accumulated gradient, read once per optimizer step.

Gradient accumulation counts once; adapters without a gradient (switched off) keep their score.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from dynlora.core.layer import LoraLayer
from dynlora.observe.scores import RunningScores


class GradientNorm(RunningScores):
    """Norm of each adapter's A and B gradients, once per optimizer step."""

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
