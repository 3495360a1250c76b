"""The L2 norm of each adapted module's output ``(W + dW) x`` over training forward passes (LoRA-drop).

Every micro-batch counts; in a data-parallel run the processes' sums are averaged before they are
folded, so that every process decides alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dynlora.core.distributed import mean_across_processes
from dynlora.core.layer import LoraLayer
from dynlora.observe.scores import RunningScores


class ActivationNorm(RunningScores):
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
            names = sorted(self._pending)
            # each process saw its own micro-batches: average over processes so that every one decides alike
            values = mean_across_processes(torch.stack([self._pending[n] for n in names])).tolist()  # one sync
            self.fold(dict(zip(names, values)))
        self._pending.clear()

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
