import pytest
import torch
from accelerate import Accelerator
from torch import nn

from dynlora.core.layer import LoraLayer
from dynlora.core.surgery import remap_optimizer_state, unwrap_optimizer


def _trained(opt_cls=torch.optim.AdamW, **kw):
    torch.manual_seed(0)
    layer = LoraLayer(nn.Linear(6, 5), rank=4, alpha=4.0, use_gate=True)
    layer.base.requires_grad_(False)
    params = [p for p in layer.parameters() if p.requires_grad]
    opt = opt_cls(params, lr=1e-2, **kw)
    for _ in range(3):
        layer(torch.randn(8, 6)).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    return layer, opt


@pytest.mark.parametrize("opt_cls,kw", [(torch.optim.AdamW, {}), (torch.optim.Adam, {"amsgrad": True}),
                                        (torch.optim.SGD, {"momentum": 0.9})])
def test_surviving_moments_bit_identical_new_ones_zero(opt_cls, kw):
    layer, opt = _trained(opt_cls, **kw)
    before = {name: {k: v.clone() for k, v in opt.state[p].items()} for name, p in
              [("A", layer.lora_A), ("B", layer.lora_B), ("c", layer.gate)]}
    keep = torch.tensor([2, 0])
    remap_optimizer_state(opt, layer.resize(keep=keep, grow=3))
    for name, p, dim in [("A", layer.lora_A, 0), ("B", layer.lora_B, 1), ("c", layer.gate, 0)]:
        state = opt.state[p]
        for key, old in before[name].items():
            new = state[key]
            if old.dim() == 0:
                assert torch.equal(new, old)  # step count untouched
                continue
            assert new.shape == p.shape
            assert torch.equal(new.narrow(dim, 0, 2), old.index_select(dim, keep))
            assert torch.count_nonzero(new.narrow(dim, 2, 3)) == 0
    # and the optimizer keeps working at the new shape
    layer(torch.randn(8, 6)).pow(2).sum().backward()
    opt.step()
    assert layer.lora_A.shape == (5, 6)


def test_pruned_state_is_gone():
    layer, opt = _trained()
    remap_optimizer_state(opt, layer.resize(keep=[1]))
    assert opt.state[layer.lora_A]["exp_avg"].shape == (1, 6)
    assert opt.state[layer.lora_B]["exp_avg_sq"].shape == (5, 1)


def test_works_through_accelerate_wrapper():
    layer, opt = _trained()
    acc_opt = Accelerator(cpu=True).prepare_optimizer(opt)
    assert unwrap_optimizer(acc_opt) is opt
    exp_avg = opt.state[layer.lora_A]["exp_avg"].clone()
    remap_optimizer_state(acc_opt, layer.resize(keep=[3, 2, 1, 0]))
    assert torch.equal(opt.state[layer.lora_A]["exp_avg"], exp_avg.flip(0))


def test_no_state_yet_is_fine():
    layer = LoraLayer(nn.Linear(6, 5), rank=4, alpha=4.0)
    opt = torch.optim.AdamW(layer.parameters())
    remap_optimizer_state(opt, layer.resize(keep=[0], grow=1))
    remap_optimizer_state(None, [])
    assert layer.rank == 2
