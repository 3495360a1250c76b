"""Counting what adapters cost: trainable parameters and forward FLOPs per token."""

from __future__ import annotations

from torch import nn

from dynlora.core.inject import adapters


def trainable_parameters(model: nn.Module) -> int:
    """Every tensor element that trains (adapters, and the task head when it trains)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def adapter_flops_per_token(model: nn.Module) -> int:
    """Forward FLOPs per token of every dynlora adapter path at its current rank."""
    return sum(layer.flops_per_token() for layer in adapters(model).values())
