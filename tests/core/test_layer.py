import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from dynlora.core.layer import LoraLayer
from tests.tolerance import assert_within_rounding, rounding_bound


def _layer(kind: str = "linear", rank: int = 4, gate: bool = True) -> LoraLayer:
    torch.manual_seed(0)
    base = nn.Linear(12, 10) if kind == "linear" else Conv1D(10, 12)
    layer = LoraLayer(base, rank=rank, alpha=8.0, use_gate=gate, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # a trained-looking adapter: B non-zero, gates not all 1
        layer.lora_B.normal_()
        if gate:
            layer.gate.uniform_(0.2, 1.0)
    return layer


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_fresh_adapter_is_identity(kind):
    base = nn.Linear(12, 10) if kind == "linear" else Conv1D(10, 12)
    layer = LoraLayer(base, rank=4, alpha=8.0, use_gate=True)
    x = torch.randn(3, 5, 12)
    assert torch.equal(layer(x), base(x))


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_merged_equals_unmerged_and_unmerge_restores(kind):
    layer = _layer(kind)
    x = torch.randn(3, 5, 12)
    before_w = layer.base.weight.clone()
    y = layer(x)
    layer.merge()
    assert not torch.allclose(layer.base.weight, before_w)
    # merged: x (W + s B diag(g) A)^T, the delta summed over the 4 ranks first; unmerged: the 12 inputs summed
    # twice and added: another order of the same sums (12 + 4 terms, and the final addition)
    assert_within_rounding(layer(x), y, terms=12 + 4 + 1)
    merged = layer.base.weight.clone()
    layer.unmerge()
    # (W + delta) - delta, the same delta both times: two roundings of the merged weight's size
    assert float((layer.base.weight - before_w).abs().max()) <= rounding_bound(merged, terms=2)
    assert_within_rounding(layer(x), y, terms=12 + 4 + 1 + 2)


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_grow_keeps_output(kind):
    layer = _layer(kind)
    x = torch.randn(3, 5, 12)
    y = layer(x)
    layer.resize(keep=torch.arange(4), grow=3, generator=torch.Generator().manual_seed(2))
    assert layer.rank == 7
    assert layer.lora_A[4:].abs().sum() > 0  # new A rows are random, B columns zero
    assert torch.count_nonzero(layer.lora_B[:, 4:]) == 0
    assert torch.equal(layer.gate[4:], torch.ones(3))
    # the new ranks add exact zeros, but a kernel may sum the 7 ranks in another order than the 4
    assert_within_rounding(layer(x), y, terms=7)


def test_pruning_zero_gate_ranks_keeps_output_and_frees_everything():
    layer = _layer()
    with torch.no_grad():
        layer.gate[[1, 3]] = 0.0
    x = torch.randn(2, 12)
    y = layer(x)
    params, flops = layer.num_parameters(), layer.flops_per_token()
    layer.resize(keep=[0, 2])
    assert layer.rank == 2 and layer.lora_A.shape == (2, 12) and layer.lora_B.shape == (10, 2)
    assert layer.num_parameters() == params // 2
    assert layer.flops_per_token() < flops
    assert_within_rounding(layer(x), y, terms=4)  # the pruned ranks added exact zeros; 2 of 4 ranks left to sum


def test_pruning_a_live_rank_changes_output():
    layer = _layer()
    x = torch.randn(2, 12)
    y = layer(x)
    layer.resize(keep=[0, 2])
    assert not torch.allclose(layer(x), y)


def test_rank_zero_costs_nothing_and_is_identity():
    layer = _layer()
    x = torch.randn(2, 12)
    layer.resize(keep=[])
    assert layer.rank == 0 and layer.num_parameters() == 0 and layer.flops_per_token() == 0
    assert torch.equal(layer(x), layer.base(x))  # nothing is added
    layer.resize(keep=[], grow=2)
    assert torch.equal(layer(x), layer.base(x))  # exact zeros are added


def _adapter_parameters(layer: LoraLayer) -> list[torch.nn.Parameter]:
    return [p for name, p in layer.named_parameters() if not name.startswith("base.")]


def test_a_rank_zero_adapter_asks_for_no_gradient_and_trains_again_once_grown():
    """A rank-0 forward skips the adapter path: a parameter that asked for a gradient would get none, which DDP
    without find_unused_parameters rejects. The input gate's parameters are unused at rank 0 too."""
    layer = LoraLayer(nn.Linear(12, 10), rank=3, alpha=8.0, use_gate=True, input_gate=True)
    x = torch.randn(2, 12)
    layer(x).sum().backward()
    layer.resize(keep=[])
    assert len(_adapter_parameters(layer)) == 5
    assert not any(p.requires_grad for p in _adapter_parameters(layer))
    assert layer.gate_w.grad is None  # a stale gradient would move it at the next optimizer step
    layer.resize(keep=[], grow=2, generator=torch.Generator().manual_seed(0))
    assert all(p.requires_grad for p in _adapter_parameters(layer))
    layer(x).sum().backward()
    assert all(p.grad is not None for p in _adapter_parameters(layer))
    built_empty = LoraLayer(nn.Linear(12, 10), rank=0, alpha=8.0, use_gate=True, input_gate=True)
    assert not any(p.requires_grad for p in _adapter_parameters(built_empty))


def test_resize_reorders_and_names_old_and_new_parameters():
    layer = _layer()
    old, a = layer.lora_A, layer.lora_A.detach().clone()
    changes = layer.resize(keep=[3, 1])
    assert changes[0].old is old and changes[0].param is layer.lora_A
    assert torch.equal(layer.lora_A, a[[3, 1]]) and layer.lora_A.requires_grad
    assert [c.dim for c in changes] == [0, 1, 0]


def test_backward_works_after_resize_while_an_old_graph_is_alive():
    layer = _layer()
    loss = layer(torch.randn(2, 12)).sum()
    loss.backward()  # `loss` (and its graph) stays alive, as in a user's loop
    layer.resize(keep=[0, 2], grow=3)
    layer(torch.randn(2, 12)).sum().backward()
    assert layer.lora_B.grad.shape == (10, 5)


def test_resize_rejects_bad_indices():
    layer = _layer()
    with pytest.raises(ValueError):
        layer.resize(keep=[4])
    with pytest.raises(ValueError):
        layer.resize(keep=[1, 1])
    with pytest.raises(ValueError):
        layer.resize(keep=[0], grow=-1)
    layer.merge()
    with pytest.raises(RuntimeError):
        layer.resize(keep=[0])


def test_counts():
    layer = _layer(rank=4, gate=True)
    assert layer.num_parameters() == 4 * (12 + 10) + 4
    assert layer.flops_per_token() == 2 * 4 * 22 + 4 + 10
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) - sum(
        p.numel() for p in layer.base.parameters()) == layer.num_parameters()


def test_load_state_dict_takes_the_saved_rank_and_fade():
    torch.manual_seed(0)
    saved = LoraLayer(nn.Linear(6, 5), rank=2, alpha=4.0, use_gate=True)
    saved.resize(keep=[1], grow=3)  # rank 4, as after a reallocation
    saved.enable_fade()
    with torch.no_grad():
        saved.lora_B.normal_()
        saved.fade[0] = 0.5
    fresh = LoraLayer(nn.Linear(6, 5), rank=2, alpha=4.0, use_gate=True)
    fresh.load_state_dict(saved.state_dict())
    assert fresh.rank == 4 and fresh.fade is not None
    x = torch.randn(3, 6)
    assert torch.equal(fresh(x), saved(x))  # the same weights in the same computation
