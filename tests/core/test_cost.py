"""The one place the cost formulas live (``core.cost``): what a layer counts, what a budget charges per
rank and once, and what plain LoRA costs agree with each other and with the tensors a layer holds."""

import pytest
from torch import nn

from dynlora.core.cost import adapter_cost
from dynlora.core.count import fixed_cost, lora_cost, rank_cost
from dynlora.core.layer import LoraLayer


@pytest.mark.parametrize("gate,input_gate", [(False, False), (True, False), (True, True), (False, True)])
def test_a_layers_parameters_are_the_tensors_it_trains_and_the_budget_charges_them_per_rank(gate, input_gate):
    for rank in range(5):
        layer = LoraLayer(nn.Linear(12, 10), rank=rank, alpha=4.0, use_gate=gate, input_gate=input_gate)
        held = sum(p.numel() for p in layer.parameters() if p is not layer.base.weight and p is not layer.base.bias)
        assert layer.num_parameters() == (held if rank else 0), rank
        for unit in ("rank", "params", "flops"):
            if rank:  # a budget charges a fixed part once and the same for every rank
                assert fixed_cost(layer, unit) + rank * rank_cost(layer, unit) == adapter_cost(
                    12, 10, rank, unit, gate=gate, input_gate=input_gate), (unit, rank)
            assert lora_cost(layer, rank, unit) == adapter_cost(12, 10, rank, unit)
        assert layer.flops_per_token() == adapter_cost(12, 10, rank, "flops", gate=gate, input_gate=input_gate)


def test_plain_lora_costs_by_hand():
    assert adapter_cost(12, 10, 3, "params") == 3 * 22
    assert adapter_cost(12, 10, 3, "flops") == 2 * 3 * 22 + 10  # through A and B, then the add to the output
    assert adapter_cost(12, 10, 0, "flops") == 0 and adapter_cost(12, 10, 3, "rank") == 3
    # the input gate: w and b; a dot product with x, the sigmoid (4), scaling the r activations
    assert adapter_cost(12, 10, 3, "params", input_gate=True) - adapter_cost(12, 10, 3, "params") == 13
    assert adapter_cost(12, 10, 3, "flops", input_gate=True) - adapter_cost(12, 10, 3, "flops") == 24 + 4 + 3
