"""A rank grown mid-run steps exactly as a fresh Adam on it would (its own bias correction)."""

import pytest
import torch
from torch import nn

from dynlora.core.fresh_slots import FreshSlots
from dynlora.core.layer import LoraLayer
from dynlora.core.surgery import remap_optimizer_state

OPTIMIZERS = [(torch.optim.Adam, {}), (torch.optim.AdamW, {"weight_decay": 0.1}),
              (torch.optim.Adam, {"amsgrad": True, "weight_decay": 0.01})]


def _loss(layer: LoraLayer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (layer(x) - y).pow(2).mean()


def _grown(opt_cls, kw, steps: int = 60, fresh: bool = True):
    """A layer trained ``steps`` steps, then grown by 2 ranks; (layer, optimizer, data, slots)."""
    torch.manual_seed(0)
    layer = LoraLayer(nn.Linear(12, 10), rank=3, alpha=3.0, use_gate=True)
    layer.base.requires_grad_(False)
    opt = opt_cls([p for p in layer.parameters() if p.requires_grad], lr=1e-2, **kw)
    x, y = torch.randn(64, 12), torch.randn(64, 10)
    for _ in range(steps):
        _loss(layer, x, y).backward()
        opt.step()
        opt.zero_grad()
    slots = FreshSlots()
    if fresh:
        slots.install(opt)
    changes = layer.resize(keep=[0, 1, 2], grow=2, generator=torch.Generator().manual_seed(1))
    remap_optimizer_state(opt, changes)
    slots.follow(opt, changes)
    return layer, opt, (x, y), slots


@pytest.mark.parametrize("opt_cls,kw", OPTIMIZERS)
def test_grown_ranks_step_as_a_fresh_adam(opt_cls, kw):
    layer, opt, (x, y), _ = _grown(opt_cls, kw)
    # the same two ranks' values and gradients, handed to an optimizer that has never stepped
    twin = {name: nn.Parameter(getattr(layer, name).detach()[index].clone())
            for name, index in (("lora_A", (slice(3, 5),)), ("lora_B", (slice(None), slice(3, 5))),
                                ("gate", (slice(3, 5),)))}
    fresh = opt_cls(list(twin.values()), lr=1e-2, **kw)
    old_b = layer.lora_B.detach()[:, :3].clone()
    for _ in range(8):
        _loss(layer, x, y).backward()
        twin["lora_A"].grad = layer.lora_A.grad[3:5].clone()
        twin["lora_B"].grad = layer.lora_B.grad[:, 3:5].clone()
        twin["gate"].grad = layer.gate.grad[3:5].clone()
        opt.step()
        fresh.step()
        opt.zero_grad()
        fresh.zero_grad()
        torch.testing.assert_close(layer.lora_A.detach()[3:5], twin["lora_A"].detach(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(layer.lora_B.detach()[:, 3:5], twin["lora_B"].detach(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(layer.gate.detach()[3:5], twin["gate"].detach(), rtol=1e-5, atol=1e-7)
    assert not torch.equal(layer.lora_B.detach()[:, :3], old_b)  # the old ranks trained on


def _first_steps(fresh: bool) -> list[float]:
    """Mean |dB| / lr of the grown columns on each of their first 10 steps (AdamW, grown at step 100)."""
    layer, opt, (x, y), _ = _grown(torch.optim.AdamW, {}, steps=100, fresh=fresh)
    sizes = []
    for _ in range(10):
        before = layer.lora_B.detach()[:, 3:].clone()
        _loss(layer, x, y).backward()
        opt.step()
        opt.zero_grad()
        sizes.append(float((layer.lora_B.detach()[:, 3:] - before).abs().mean()) / 1e-2)
    return sizes


def test_first_updates_are_not_several_learning_rates():
    assert max(_first_steps(fresh=True)) <= 1.05  # a fresh Adam's update is about lr, never far above it
    assert max(_first_steps(fresh=False)) > 1.5  # the tensor's own count (bias correction ~0.1 at step 100)


def test_old_slots_are_untouched_and_births_follow_resizes():
    layer, opt, (x, y), slots = _grown(torch.optim.AdamW, {})
    births = slots.births[id(layer.lora_B)].born
    assert births.tolist() == [0, 0, 0, 60, 60]
    changes = layer.resize(keep=[4, 0], grow=1)
    remap_optimizer_state(opt, changes)
    slots.follow(opt, changes)
    assert slots.births[id(layer.lora_B)].born.tolist() == [60, 0, 60]
    assert id(changes[1].old) not in slots.births
    # checkpointed by name, read back onto other parameter objects
    saved = slots.state_dict({"B": layer.lora_B, "A": layer.lora_A})
    other = FreshSlots()
    other.load_state_dict(saved, {"B": layer.lora_B, "A": layer.lora_A}, {"B": 1, "A": 0})
    assert other.births[id(layer.lora_A)].born.tolist() == [60, 0, 60]
    with pytest.raises(ValueError, match="birth steps"):
        other.load_state_dict({"B": [0.0]}, {"B": layer.lora_B}, {"B": 1})
