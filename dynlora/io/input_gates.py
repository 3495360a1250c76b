"""The input gate g(x) at export time: which adapters have one, its mean over a calibration set, and
running the model with each g(x) held at that mean (what a folded PEFT export computes)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from dynlora.core.inject import adapters


def input_gated(model: nn.Module) -> list[str]:
    """Adapters with an input-feature gate g(x), which plain PEFT LoRA cannot express."""
    return [name for name, layer in adapters(model).items() if layer.has_input_gate and layer.rank]


@torch.no_grad()
def calibrate_input_gates(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, float]:
    """Mean of each adapter's g(x) over every token position of the calibration batches."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    handles = []
    for name, layer in adapters(model).items():
        if layer.has_input_gate:
            def hook(module, args, output, name=name):
                g = module.input_gate_values(args[0])
                sums[name] = sums.get(name, 0.0) + float(g.sum())
                counts[name] = counts.get(name, 0) + g.numel()
            handles.append(layer.register_forward_hook(hook))
    try:
        was_training = model.training
        model.eval()
        for batch in batches:
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
