"""Counting what adapters cost: trainable parameters and forward FLOPs per token."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

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


def idle_fixed(fixed: Mapping[str, int] | None, *ranks: Mapping[str, int]) -> int:
    """The fixed costs of the modules at rank 0 in every one of ``ranks``: budget that no rank of theirs
    uses, now or after the change (None: no fixed costs)."""
    if fixed is None:
        return 0
    return sum(cost for name, cost in fixed.items() if all(r[name] == 0 for r in ranks))


@dataclass(frozen=True)
class Budget:
    """What a run's ranks may cost, always with costs: ``total`` in ``unit``, what one rank of each adapter
    costs (``costs``: 1 each when counting ranks) and what each adapter costs once at any rank >= 1
    (``fixed``: its input gate; in FLOPs the add of its update; 0 each when counting ranks), already paid
    out of ``total`` for every adapter: an adapter at rank 0 hands its fixed cost back (``idle``)."""

    unit: str
    total: int
    costs: Mapping[str, int]
    fixed: Mapping[str, int]

    @property
    def counts_ranks(self) -> bool:
        """Whether the unit is ranks: the total is conserved exactly, every module may hold all of it."""
        return self.unit == "rank"

    def spent(self, ranks: Mapping[str, int]) -> int:
        """What ``ranks`` cost in the unit, the fixed costs aside."""
        return sum(r * self.costs[n] for n, r in ranks.items())

    def idle(self, *ranks: Mapping[str, int]) -> int:
        """The fixed costs of the adapters at rank 0 in every one of ``ranks`` (``idle_fixed``)."""
        return idle_fixed(self.fixed, *ranks)

    def subset(self, ranks: Mapping[str, int]) -> "Budget":
        """The budget of only the adapters in ``ranks``: what those ranks cost now."""
        part = Budget(self.unit, 0, {n: self.costs[n] for n in ranks}, {n: self.fixed[n] for n in ranks})
        return replace(part, total=part.spent(ranks) - part.idle(ranks))


def run_budget(layers: Mapping[str, LoraLayer], unit: str, ranks: Mapping[str, int] | None = None) -> Budget:
    """The budget in ``unit`` of ``layers``: what plain LoRA of ``ranks`` (default: the adapters' ranks now)
    costs, less what the adapters cost at any rank (input gates)."""
    check_budget_unit(unit)
    ranks = ranks if ranks is not None else {name: layer.rank for name, layer in layers.items()}
    fixed = {name: fixed_cost(layer, unit) for name, layer in layers.items()}
    return Budget(unit, sum(lora_cost(layer, ranks[name], unit) - fixed[name] for name, layer in layers.items()),
                  {name: rank_cost(layer, unit) for name, layer in layers.items()}, fixed)


def optimizable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """What an optimizer must hold: every parameter that trains now, and every adapter parameter even while
    its adapter is switched off (it may train later: an optimizer built without it would never step it)."""
    own = {id(p) for layer in adapters(model).values() for p in layer.parameters()}
    return [p for p in model.parameters() if p.requires_grad or id(p) in own]
