"""The input gate g(x) at export time: which adapters have one, its mean over a calibration set, and
running the model with each g(x) held at that mean (what a folded PEFT export computes)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from dynlora.core.inject import adapters
from dynlora.core.layer import LoraLayer


def input_gated(model: nn.Module) -> list[str]:
    """Adapters with an input-feature gate g(x), which plain PEFT LoRA cannot express."""
    return [name for name, layer in adapters(model).items() if layer.has_input_gate and layer.rank]


@torch.no_grad()
def calibrate_input_gates(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, float]:
    """Mean of each adapter's g(x) over the real tokens of the calibration batches.

    A batch's ``attention_mask`` says which positions are real where a layer's input is (batch, seq, in) with
    the mask's (batch, seq); padding would otherwise weigh in by how unequal the batch's lengths are. Without
    a mask, or for an input of another layout, every position counts.
    """
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    mask: list[torch.Tensor | None] = [None]  # the current batch's attention mask, read by the hooks
    handles = []
    for name, layer in adapters(model).items():
        if layer.has_input_gate:
            def hook(module: LoraLayer, args: tuple[torch.Tensor, ...], output: torch.Tensor, name: str = name) -> None:
                g = module.input_gate_values(args[0])  # (..., 1)
                real = mask[0]
                if real is not None and tuple(g.shape[:-1]) == tuple(real.shape):
                    weight = real.to(g.device, g.dtype).unsqueeze(-1)  # (batch, seq, 1): 1 real, 0 padding
                    total, count = float((g * weight).sum()), float(weight.sum())
                else:
                    total, count = float(g.sum()), float(g.numel())
                sums[name] = sums.get(name, 0.0) + total
                counts[name] = counts.get(name, 0.0) + count
            handles.append(layer.register_forward_hook(hook))
    try:
        was_training = model.training
        model.eval()
        for batch in batches:
            given = batch.get("attention_mask")
            mask[0] = given if isinstance(given, torch.Tensor) and given.dim() == 2 else None
            model(**batch)
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return {name: sums[name] / counts[name] for name in sums}


@contextmanager
def constant_input_gates(model: nn.Module, means: Mapping[str, float]) -> Iterator[None]:
    """Run the model with each g(x) replaced by its calibration mean: what the PEFT export computes."""
    layers = adapters(model)
    try:
        for name, value in means.items():
            layers[name].input_gate_constant = value
        yield
    finally:
        for name in means:
            layers[name].input_gate_constant = None
