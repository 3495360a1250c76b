"""The L2 norm of each adapted module's output ``(W + dW) x`` over training forward passes (LoRA-drop).

Per optimizer step the signal is the norm of the module's output over the whole step's batch:
with gradient accumulation the micro-batches' norms combine as ``sqrt(sum n_i^2)``, so 8 x 2
accumulation scores exactly like one batch of 16. A block that gradient checkpointing recomputes
during backward is not counted again. In a data-parallel run the processes' values are averaged
before they are folded, so that every process decides alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dynlora.core.distributed import mean_across_processes
from dynlora.core.layer import LoraLayer
from dynlora.observe.scores import RunningScores


def in_backward() -> bool:
    """Whether autograd is running a backward pass now (where checkpointing recomputes forwards)."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return task is not None and task() != -1


def _combined(norms: list[torch.Tensor]) -> torch.Tensor:
    """The norm over several micro-batches' outputs from their norms: sqrt(sum n_i^2)."""
    return norms[0] if len(norms) == 1 else torch.stack(norms).pow(2).sum().sqrt()


class ActivationNorm(RunningScores):
    """Accumulated L2 norm of each adapted module's output over each optimizer step's batch."""

    def __init__(self, decay: float | None = None) -> None:
        super().__init__(decay)
        self._pending: dict[str, list[torch.Tensor]] = {}
        self._handles: list[Any] = []

    def attach(self, layers: Mapping[str, LoraLayer]) -> None:
        for name, layer in layers.items():
            self._raw.setdefault(name, 0.0)
            self._handles.append(layer.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            if module.training and not in_backward():  # a checkpointed block's recompute is not a new batch
                # stays on the device (no sync per module); reduced in float32 without a float32 copy of a
                # bf16 output
                norm = torch.linalg.vector_norm(output.detach(), dtype=torch.float32)
                self._pending.setdefault(name, []).append(norm)
        return hook

    def step(self, layers: Mapping[str, LoraLayer]) -> None:
        if self._pending:
            names = sorted(self._pending)
            # each process saw its own micro-batches: average over processes so that every one decides alike
            norms = [_combined(self._pending[n]) for n in names]
            values = mean_across_processes(torch.stack(norms))  # (modules,), on the device
            self.fold(dict(zip(names, values.unbind())))
        self._pending.clear()

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
