"""Counting what adapters cost: trainable parameters and forward FLOPs per token."""

from __future__ import annotations

from torch import nn

from dynlora.core.cost import adapter_cost
from dynlora.core.inject import adapters
from dynlora.core.layer import LoraLayer
from dynlora.errors import DynloraError


def trainable_parameters(model: nn.Module) -> int:
    """Every tensor element that trains (adapters, and the task head when it trains)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adapter_flops_per_token(model: nn.Module) -> int:
    """Forward FLOPs per token of every dynlora adapter path at its current rank."""
    return sum(layer.flops_per_token() for layer in adapters(model).values())


BUDGET_UNITS = ("rank", "params", "flops")


def check_budget_unit(unit: str) -> None:
    """A one-line error for a budget unit that is not valid."""
    if unit not in BUDGET_UNITS:
        raise DynloraError(f"budget_unit {unit!r} is not valid; valid: {', '.join(BUDGET_UNITS)}")


def rank_cost(layer: LoraLayer, unit: str) -> int:
    """What one more rank of ``layer`` costs in ``unit``: 1, its parameters (a row of A, a column of B, its
    gate), or its forward FLOPs per token (``core.cost``: the same at every rank >= 1)."""
    check_budget_unit(unit)
    return _layer_cost(layer, 2, unit) - _layer_cost(layer, 1, unit)


def fixed_cost(layer: LoraLayer, unit: str) -> int:
    """What ``layer`` costs in ``unit`` whatever its rank (>= 1): the input gate, the add of the update."""
    check_budget_unit(unit)
    return _layer_cost(layer, 1, unit) - rank_cost(layer, unit)


def _layer_cost(layer: LoraLayer, rank: int, unit: str) -> int:
    return adapter_cost(layer.in_features, layer.out_features, rank, unit, gate=layer.gate is not None,
                        input_gate=layer.has_input_gate)


def lora_cost(layer: LoraLayer, rank: int, unit: str) -> int:
    """What plain LoRA (no gates) of ``rank`` costs on ``layer``'s module in ``unit``: the yardstick of a budget."""
    return linear_lora_cost(layer.in_features, layer.out_features, rank, unit)


def linear_lora_cost(in_features: int, out_features: int, rank: int, unit: str) -> int:
    """Plain LoRA of ``rank`` on an ``in_features -> out_features`` module, in ``unit``."""
    check_budget_unit(unit)
    return adapter_cost(in_features, out_features, rank, unit)


def optimizable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What an optimizer must hold: every parameter that trains now, and every adapter parameter even while
    its adapter is switched off (it may train later: an optimizer built without it would never step it)."""
    own = {id(p) for layer in adapters(model).values() for p in layer.parameters()}
    return [p for p in model.parameters() if p.requires_grad or id(p) in own]
