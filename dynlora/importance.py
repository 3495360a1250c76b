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

from dynlora.distributed import mean_across_processes
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
            names = sorted(self._pending)
            # each process saw its own micro-batches: average over processes so that every one decides alike
            values = mean_across_processes(torch.stack([self._pending[n] for n in names])).tolist()  # one sync
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


class Sensitivity:
    """Per-rank sensitivity ``|theta * grad|`` of each adapter, smoothed by an EMA (as AdaLoRA does).

    For rank i of a module: ``sum |A[i] * dA[i]| + sum |B[:, i] * dB[:, i]|`` (+ ``|c_i * dc_i|`` with a
    gate), read once per optimizer step. ``I <- beta * I + (1 - beta) * s``; with ``uncertainty`` also
    ``U <- beta_u * U + (1 - beta_u) * |s - I|`` and the score is ``I * U``. A module's score is the
    sum over its ranks. ``remap`` follows a resize: kept ranks keep their history, new ranks start at
    the mean of the kept ones (so a fresh rank, whose B is zero, is not the first one pruned).
    """

    def __init__(self, beta: float = 0.85, uncertainty: bool = False, beta_u: float = 0.85) -> None:
        for name, value in (("beta", beta), ("beta_u", beta_u)):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        self.beta, self.beta_u, self.uncertainty = beta, beta_u, uncertainty
        self.ema: dict[str, torch.Tensor] = {}
        self.unc: dict[str, torch.Tensor] = {}

    def attach(self, layers: Mapping[str, LoraLayer]) -> None:
        for name, layer in layers.items():
            self.ema.setdefault(name, torch.zeros(layer.rank))
            self.unc.setdefault(name, torch.zeros(layer.rank))

    @torch.no_grad()
    def step(self, layers: Mapping[str, LoraLayer]) -> None:
        for name, layer in layers.items():
            a, b = layer.lora_A, layer.lora_B
            if a.grad is None or b.grad is None or layer.rank == 0:
                continue
            s = (a * a.grad).abs().sum(1) + (b * b.grad).abs().sum(0)  # (r,)
            if layer.gate is not None and layer.gate.grad is not None:
                s = s + (layer.gate * layer.gate.grad).abs()
            s = s.detach().float()  # stays on the device: no host sync per module and step
            old, unc = self.ema[name].to(s.device), self.unc[name].to(s.device)
            self.ema[name] = self.beta * old + (1 - self.beta) * s
            self.unc[name] = self.beta_u * unc + (1 - self.beta_u) * (s - self.ema[name]).abs()

    def rank_scores(self, name: str) -> torch.Tensor:
        """(r,) importance of each rank of one module."""
        return self.ema[name] * self.unc[name] if self.uncertainty else self.ema[name]

    def scores(self) -> dict[str, float]:
        raw = {n: float(self.rank_scores(n).sum()) for n in self.ema}
        total = sum(raw.values())
        return {n: (v / total if total > 0 else 1.0 / len(raw)) for n, v in raw.items()}

    def remap(self, name: str, keep: torch.Tensor | list[int], grow: int) -> None:
        for table in (self.ema, self.unc):
            index = torch.as_tensor(keep, dtype=torch.long, device=table[name].device)
            kept = table[name].index_select(0, index)
            fill = kept.mean() if kept.numel() else kept.new_zeros(())
            table[name] = torch.cat([kept, fill.expand(grow)])

    def state_dict(self) -> dict[str, Any]:
        return {"ema": {n: t.cpu().tolist() for n, t in self.ema.items()},
                "unc": {n: t.cpu().tolist() for n, t in self.unc.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ema = {n: torch.tensor(v, dtype=torch.float32) for n, v in state["ema"].items()}
        self.unc = {n: torch.tensor(v, dtype=torch.float32) for n, v in state["unc"].items()}

    def detach(self) -> None:
        pass


class GateMagnitude(_Scores):
    """Sum of each module's per-rank gates |c| (needs gated adapters); the current value, not a history."""

    def attach(self, layers: Mapping[str, LoraLayer]) -> None:
        if any(layer.gate is None for layer in layers.values()):
            raise ValueError("the gate score needs adapters with per-rank gates")

    def step(self, layers: Mapping[str, LoraLayer]) -> None:
        self.raw = {n: float(layer.gate.detach().abs().sum()) for n, layer in layers.items()}

    def detach(self) -> None:
        pass
