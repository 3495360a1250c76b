"""``Budget``: one value with a unit, per-rank costs and fixed costs, always present (counting ranks: 1 per
rank, nothing fixed), built once from ``core.count``."""

import pytest
import torch
from torch import nn

from dynlora.core.count import Budget, fixed_cost, lora_cost, rank_cost, run_budget
from dynlora.core.layer import LoraLayer
from dynlora.errors import DynloraError


def _layers() -> dict[str, LoraLayer]:
    g = torch.Generator().manual_seed(0)
    return {"a": LoraLayer(nn.Linear(12, 10), rank=3, alpha=3.0, generator=g),
            "b": LoraLayer(nn.Linear(6, 20), rank=2, alpha=2.0, input_gate=True, generator=g)}


def test_counting_ranks_is_a_budget_like_any_other():
    budget = run_budget(_layers(), "rank")
    assert budget == Budget("rank", 5, {"a": 1, "b": 1}, {"a": 0, "b": 0}) and budget.counts_ranks
    assert budget.spent({"a": 4, "b": 1}) == 5 and budget.idle({"a": 5, "b": 0}) == 0


@pytest.mark.parametrize("unit", ["params", "flops"])
def test_a_budget_is_plain_loras_cost_of_the_ranks_less_what_is_paid_once(unit):
    layers = _layers()
    budget = run_budget(layers, unit, ranks={"a": 4, "b": 4})
    assert not budget.counts_ranks
    assert budget.costs == {n: rank_cost(layer, unit) for n, layer in layers.items()}
    assert budget.fixed == {n: fixed_cost(layer, unit) for n, layer in layers.items()} and budget.fixed["b"] > 0
    assert budget.total == sum(lora_cost(layer, 4, unit) - budget.fixed[n] for n, layer in layers.items())
    # an adapter at rank 0 hands back what it would pay once; a part of the budget is what its ranks cost now
    assert budget.idle({"a": 3, "b": 0}) == budget.fixed["b"] and budget.idle({"a": 3, "b": 0}, {"a": 2, "b": 1}) == 0
    part = budget.subset({"b": 0})
    assert part.costs == {"b": budget.costs["b"]} and part.total == -budget.fixed["b"]
    assert budget.subset({"a": 2}).total == 2 * budget.costs["a"]  # its fixed cost is paid out of the rest


def test_a_unit_that_is_not_one_is_a_one_line_error():
    with pytest.raises(DynloraError, match="budget_unit 'bytes' is not valid; valid: rank, params, flops"):
        run_budget(_layers(), "bytes")
