"""Folding the input gate into a plain PEFT export: calibrate its mean, measure what that costs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dynlora.io.input_gates import calibrate_input_gates, constant_input_gates
from dynlora.methods.base import Prepared
from dynlora.training.records import GateExport


def input_gate_export(prepared: Prepared, calibration: Any, collate: Callable[[list[Any]], dict[str, torch.Tensor]],
                      score: Callable[[], dict[str, float]]) -> tuple[dict[str, float], GateExport]:
    """Gate means over a calibration split, and what folding them into B costs.

    ``score()`` evaluates the model on the test split; it runs with the gates held at their means, and its
    results are returned as ``export_<name>`` (the logits error is measured on the calibration batches).
    """
    device = next(prepared.model.parameters()).device
    batches = []
    for start in range(0, min(len(calibration), 256), 64):
        batch = collate([calibration[i] for i in range(start, min(start + 64, len(calibration), 256))])
        batches.append({k: v.to(device) for k, v in batch.items() if k != "labels"})
    means = calibrate_input_gates(prepared.model, batches)
    prepared.model.eval()
    with torch.no_grad():
        exact = [prepared.model(**b).logits for b in batches]
        with constant_input_gates(prepared.model, means):
            folded = [prepared.model(**b).logits for b in batches]
            approx = score()
    error = max(float((e - f).abs().max()) for e, f in zip(exact, folded))
    gate_flops = sum(layer.input_gate_flops() for layer in prepared.controller.layers.values())
    forward_flops = 2 * sum(p.numel() for p in prepared.model.parameters())  # per token, dense estimate
    return means, GateExport(input_gate_mean=round(sum(means.values()) / len(means), 4),
                             export_logits_max_error=round(error, 6),
                             **{f"export_{k}": v for k, v in approx.items()},  # type: ignore[typeddict-item]
                             input_gate_flops=gate_flops, input_gate_flops_share=round(gate_flops / forward_flops, 6))
