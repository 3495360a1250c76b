"""The L2 norm of each adapter's own output ``dW x = B A x * scale`` over training forward passes (LoRA-drop).

LoRA-drop (arXiv 2402.07721) and the module-allocation authors' code (JesseBrouw/FoMo-LoRA accumulates
``norm(lora_B(lora_A(x)) * scaling)``) score the adapter path, not the whole layer: the frozen base's
``W x`` would dominate ``(W + dW) x``, and the selection would be a property of the pretrained weights
(with dW at 5 % of W the normalised scores moved by under 1e-3 between dW = 0 and a trained dW).
``LoraLayer.update_norm`` computes it in rank space, without forming ``dW x``.

Per optimizer step the signal is the norm over the whole step's batch: with gradient accumulation
the micro-batches' norms combine as ``sqrt(sum n_i^2)``, so 8 x 2 accumulation scores exactly like one
batch of 16. A block that gradient checkpointing recomputes during backward is not counted again. In a
data-parallel run the processes' values are averaged before they are folded, so that every process
decides alike.

**Forecast** (``forecast = True``, set by a method for a probe in which no adapter trains): every B is
still 0, so ``dW x`` is 0 everywhere. The signal is then the norm of the loss gradient with respect to
B, ``|scale * sum_t delta_t (A x_t)^T|`` (``delta_t``: the gradient at the layer's output): how fast
``|dW x|`` would grow under the first steps of training, the first-order forecast of the trained score.
Each adapter's output is tied to a fresh zero leaf so that the backward reaches it; no parameter gets
a gradient. It costs a backward pass through the network (what a warm-up costs, less the optimizer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

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
    """Accumulated L2 norm of each adapter's output ``dW x`` over each optimizer step's batch."""

    def __init__(self, decay: float | None = None) -> None:
        super().__init__(decay)
        self.forecast = False
        self._pending: dict[str, list[torch.Tensor]] = {}
        self._grads: dict[str, torch.Tensor] = {}  # forecast: the step's dL/dB (before scale), (out, r)
        self._handles: list[Any] = []

    def attach(self, layers: Mapping[str, LoraLayer]) -> None:
        for name, layer in layers.items():
            self._raw.setdefault(name, 0.0)
            self._handles.append(layer.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module: LoraLayer, args: Any, output: torch.Tensor) -> torch.Tensor | None:
            if not module.training or in_backward():  # a checkpointed block's recompute is not a new batch
                return None
            if not self.forecast:
                # stays on the device (no sync per module)
                self._pending.setdefault(name, []).append(module.update_norm(args[0]))
                return None
            if module.rank == 0 or not torch.is_grad_enabled():
                return None
            h = module.rank_activations(args[0])  # (n, r)
            tied = output + torch.zeros((), dtype=output.dtype, device=output.device, requires_grad=True)

            def on_grad(delta: torch.Tensor) -> None:
                g_b = delta.detach().reshape(-1, delta.shape[-1]).float().T @ h  # (out, r): dL/dB / scale
                self._grads[name] = self._grads[name] + g_b if name in self._grads else g_b

            tied.register_hook(on_grad)
            return tied
        # bookkeeping in Python per adapter: under torch.compile it runs eagerly between graphs, instead of being
        # traced into one graph per adapter name (which met dynamo's recompile limit)
        return torch.compiler.disable(hook)

    def step(self, layers: Mapping[str, LoraLayer]) -> None:
        if self._grads:  # forecast: one gradient norm per module for the step's whole batch
            for name, g_b in self._grads.items():
                self._pending[name] = [torch.linalg.vector_norm(g_b) * layers[name].scale.float()]
            self._grads.clear()
        if self._pending:
            names = sorted(self._pending)
            # each process saw its own micro-batches: average over processes so that every one decides alike
            norms = [_combined(self._pending[n]) for n in names]
            values = mean_across_processes(torch.stack(norms))  # (modules,), on the device
            self.fold(dict(zip(names, values.unbind())))
        self._pending.clear()

    def restart(self, forecast: bool = False) -> None:
        """Forget what was folded (every module back to 0) and score ``dW x``, or the forecast."""
        self._raw = {name: 0.0 for name in self._raw}
        self.forecast = forecast

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "forecast": self.forecast}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.forecast = bool(state.get("forecast", False))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
