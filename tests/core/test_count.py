"""What a rank costs: per-rank and fixed costs add up to what the layer counts, for every kind of adapter."""

import pytest
import torch

from dynlora.core.count import BUDGET_UNITS, fixed_cost, lora_cost, rank_cost
from dynlora.core.inject import AdapterConfig, inject
from dynlora.errors import DynloraError
from tests.conftest import tiny_bert


@pytest.mark.parametrize("gate,input_gate", [(False, False), (True, False), (False, True), (True, True)])
def test_rank_and_fixed_costs_add_up_to_the_layer_s_own_counts(gate, input_gate):
    layers = inject(tiny_bert(), AdapterConfig(rank=3, use_gate=gate, input_gate=input_gate),
                    generator=torch.Generator().manual_seed(0))
    for layer in layers.values():
        params = sum(p.numel() for p in layer.parameters() if p.requires_grad)
        assert rank_cost(layer, "params") * layer.rank + fixed_cost(layer, "params") == params
        assert layer.num_parameters() == params
        assert rank_cost(layer, "flops") * layer.rank + fixed_cost(layer, "flops") == layer.flops_per_token()
        assert (rank_cost(layer, "rank"), fixed_cost(layer, "rank"), lora_cost(layer, 3, "rank")) == (1, 0, 3)


def test_plain_lora_cost_is_a_gateless_layer_s_cost():
    plain = inject(tiny_bert(), AdapterConfig(rank=3), generator=torch.Generator().manual_seed(0))
    for layer in plain.values():
        assert lora_cost(layer, 3, "params") == layer.num_parameters()
        assert lora_cost(layer, 3, "flops") == layer.flops_per_token()


def test_a_bad_unit_names_the_valid_ones():
    layer = next(iter(inject(tiny_bert(), AdapterConfig(rank=2)).values()))
    with pytest.raises(DynloraError, match="'bytes'.*" + ", ".join(BUDGET_UNITS)):
        rank_cost(layer, "bytes")
