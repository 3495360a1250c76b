"""What a LoRA adapter costs, in the three units a budget can count: the one place the formulas live.

Pure integer functions of a module's shape and the adapter's rank: the layer (its parameters and FLOPs
now), the budget (what one more rank costs) and the PEFT baselines' counts all call these.
"""

from __future__ import annotations


def input_gate_cost(in_features: int, rank: int, unit: str) -> int:
    """An input gate g(x) = sigmoid(w.x + b): its parameters (w and b), or its forward FLOPs per token (the
    dot product with x, 2 x in; the sigmoid, counted as 4; scaling the rank-space activations, r; none at
    rank 0, where the adapter path does not run). A gate is not a rank: 0 when counting ranks."""
    if unit == "params":
        return in_features + 1
    if unit == "flops":
        return 2 * in_features + 4 + rank if rank else 0
    return 0


def adapter_cost(in_features: int, out_features: int, rank: int, unit: str, *, gate: bool = False,
                 input_gate: bool = False) -> int:
    """A rank-``rank`` adapter on an ``in_features -> out_features`` module, in ``unit``: its rank; its
    trainable parameters (A and B, a gate per rank, the input gate); or its forward FLOPs per token (2 per
    multiply-add through A and B, the rank gates, adding the update to the output, the input gate). A rank-0
    adapter costs nothing (its input gate is frozen and no export holds it)."""
    if unit == "rank":
        return rank
    if rank == 0:
        return 0
    gates = rank if gate else 0
    extra = input_gate_cost(in_features, rank, unit) if input_gate else 0
    if unit == "params":
        return rank * (in_features + out_features) + gates + extra
    return 2 * rank * (in_features + out_features) + gates + out_features + extra
