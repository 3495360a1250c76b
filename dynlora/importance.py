"""Importance trackers: they collect a signal per adapter and decide nothing.

Each tracker is attached to the adapters, folds what it saw into one score per module once per
optimizer step (``step``), and hands out scores normalised to sum to 1 (``scores``). With ``decay``
set, the score is an exponential moving average, ``s <- decay * s + (1 - decay) * x``; without it the
signal accumulates over the whole run.

- ``ActivationNorm``: the L2 norm of each adapted module's output ``(W + dW) x`` over training forward
  passes (as in LoRA-drop); every micro-batch counts.
- ``GradientNorm``: ``sqrt(|dA|^2 + |dB|^2)`` of each adapter's accumulated gradient, read once per
  optimizer step (so gradient accumulation counts once); adapters without a gradient (inactive)
  keep their score.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import nn

from dynlora.layer import LoraLayer


class Tracker(Protocol):
    def attach(self, layers: Mapping[str, LoraLayer]) -> None: ...

    def step(self, layers: Mapping[str, LoraLayer]) -> None: ...

    def scores(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class _Scores:
    """Per-module running scores with an optional EMA decay."""

    def __init__(self, decay: float | None = None) -> None:
        if decay is not None and not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.raw: dict[str, float] = {}

    def fold(self, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            old = self.raw.get(name)
            if self.decay is None:
                self.raw[name] = (old or 0.0) + value
            else:
                self.raw[name] = value if old is None else self.decay * old + (1 - self.decay) * value

    def scores(self) -> dict[str, float]:
        total = sum(self.raw.values())
        if total <= 0:
            return {n: 1.0 / len(self.raw) for n in self.raw} if self.raw else {}
        return {n: v / total for n, v in self.raw.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"raw": dict(self.raw)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.raw = {k: float(v) for k, v in state["raw"].items()}


class ActivationNorm(_Scores):
    """Accumulated L2 norm of each adapted module's output over training forward passes."""

    def __init__(self, decay: float | None = None) -> None:
        super().__init__(decay)
        self._pending: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def attach(self, layers: Mapping[str, LoraLayer]) -> None:
        for name, layer in layers.items():
            self.raw.setdefault(name, 0.0)
            self._handles.append(layer.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            if module.training:
                norm = output.detach().float().norm()  # stays on the device: no sync per module
                self._pending[name] = self._pending[name] + norm if name in self._pending else norm
        return hook

    def step(self, layers: Mapping[str, LoraLayer]) -> None:
        if self._pending:
            names = list(self._pending)
            values = torch.stack([self._pending[n] for n in names]).tolist()  # one sync per step
            self.fold(dict(zip(names, values)))
        self._pending.clear()

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class GradientNorm(_Scores):
    """Norm of each adapter's A and B gradients, once per optimizer step."""

    def attach(self, layers: Mapping[str, LoraLayer]) -> None:
        for name in layers:
            self.raw.setdefault(name, 0.0)

    def step(self, layers: Mapping[str, LoraLayer]) -> None:
        names, norms = [], []
        for name, layer in layers.items():
            grads = [p.grad for p in (layer.lora_A, layer.lora_B) if p.grad is not None]
            if grads:
                names.append(name)
                norms.append(torch.sqrt(sum(g.detach().float().pow(2).sum() for g in grads)))
        if names:
            self.fold(dict(zip(names, torch.stack(norms).tolist())))

    def detach(self) -> None:
        pass


TRACKERS = {"activation": ActivationNorm, "gradient": GradientNorm}
