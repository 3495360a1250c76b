"""A layer with a fixed capacity of rank slots: the same function and the same resizes as the layer whose
parameters follow the rank, with parameters that keep their objects and shapes (what FSDP2, ZeRO and
torch.compile need), dead slots that never move, and a compiled graph that survives every resize."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dynlora.core.layer import LoraLayer
from dynlora.core.surgery import remap_optimizer_state
from tests.tolerance import assert_within_rounding

RANK, CAPACITY = 3, 8
# the longest chain of roundings behind one output: the base's 16-term sum, A x (16), B h (8 slots), the add
TERMS = 16 + 16 + CAPACITY + 2


def pair(**kw: object) -> tuple[LoraLayer, LoraLayer]:
    """(a rank-3 layer, the same adapter in 8 slots), with the same random B."""
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    plain = LoraLayer(copy.deepcopy(base), RANK, alpha=8, generator=torch.Generator().manual_seed(1), **kw)
    slotted = LoraLayer(copy.deepcopy(base), RANK, alpha=8, generator=torch.Generator().manual_seed(1),
                        capacity=CAPACITY, **kw)
    b = torch.randn(12, RANK)
    with torch.no_grad():
        plain.lora_B.copy_(b)
        slotted.lora_B[:, :RANK].copy_(b)
    return plain, slotted


def test_a_fresh_layer_is_the_identity_and_holds_the_plain_layer_s_ranks_first():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    layer = LoraLayer(copy.deepcopy(base), RANK, alpha=8, capacity=CAPACITY)
    x = torch.randn(5, 16)
    assert torch.equal(layer(x), base(x))
    plain, slotted = pair()
    assert (slotted.rank, slotted.slots, tuple(slotted.lora_A.shape)) == (RANK, CAPACITY, (CAPACITY, 16))
    assert torch.equal(slotted.lora_A[:RANK], plain.lora_A) and not slotted.lora_A[RANK:].any()
    assert slotted.live.tolist() == [1.0] * RANK + [0.0] * (CAPACITY - RANK)


@pytest.mark.parametrize("kw", [{}, {"use_gate": True}, {"input_gate": True}])
def test_the_same_function_as_the_layer_at_its_rank(kw):
    plain, slotted = pair(**kw)
    x = torch.randn(4, 7, 16)
    with torch.no_grad():
        assert_within_rounding(slotted(x), plain(x), TERMS)
        assert_within_rounding(slotted.delta_weight(), plain.delta_weight(), TERMS)
    assert slotted.num_parameters() == plain.num_parameters()  # the budget counts live ranks, not slots


def test_a_resize_rewrites_the_slots_in_place_as_the_plain_layer_resizes():
    plain, slotted = pair(use_gate=True)
    slotted.enable_fade()
    plain.enable_fade()
    params = [slotted.lora_A, slotted.lora_B, slotted.gate]
    plain.resize([2, 0], grow=3, generator=torch.Generator().manual_seed(5))
    slotted.resize([2, 0], grow=3, generator=torch.Generator().manual_seed(5))
    assert [slotted.lora_A, slotted.lora_B, slotted.gate] == params  # the same objects, the same shapes
    assert slotted.rank == plain.rank == 5 and slotted.lora_A.shape == (CAPACITY, 16)
    assert torch.equal(slotted.lora_A[:5], plain.lora_A) and torch.equal(slotted.lora_B[:, :5], plain.lora_B)
    assert not slotted.lora_A[5:].any() and not slotted.lora_B[:, 5:].any()
    x = torch.randn(6, 16)
    with torch.no_grad():
        assert_within_rounding(slotted(x), plain(x), TERMS)
    with pytest.raises(ValueError, match="capacity of 8"):
        slotted.resize(list(range(5)), grow=4)
    assert slotted.rank == 5 and torch.equal(slotted.lora_A[:5], plain.lora_A)  # a refused resize changes nothing


def test_the_optimizer_follows_and_dead_slots_never_move():
    plain, slotted = pair()
    opts = [torch.optim.AdamW(layer.adapter_parameters(), lr=1e-2, weight_decay=0.0) for layer in (plain, slotted)]
    x = torch.randn(8, 16)

    def step() -> None:
        for layer, opt in zip((plain, slotted), opts):
            layer(x).square().mean().backward()
            opt.step()
            opt.zero_grad()

    step()
    assert not slotted.lora_A[RANK:].any() and not slotted.lora_B[:, RANK:].any()  # zero gradient: no step
    remap_optimizer_state(opts[0], plain.resize([1, 2], grow=2, generator=torch.Generator().manual_seed(3)))
    remap_optimizer_state(opts[1], slotted.resize([1, 2], grow=2, generator=torch.Generator().manual_seed(3)))
    for p, q in ((plain.lora_A, slotted.lora_A), (plain.lora_B, slotted.lora_B)):
        dim = 0 if p is plain.lora_A else 1
        for key in ("exp_avg", "exp_avg_sq"):
            ours, theirs = opts[1].state[q][key], opts[0].state[p][key]
            assert_within_rounding(ours.narrow(dim, 0, 4), theirs, TERMS)  # the kept ranks' moments, then zeros
            assert not ours.narrow(dim, 4, CAPACITY - 4).any()
    step()
    with torch.no_grad():
        assert_within_rounding(slotted.lora_A[:4], plain.lora_A, TERMS, steps=2)
        assert_within_rounding(slotted.lora_B[:, :4], plain.lora_B, TERMS, steps=2)
    assert not slotted.lora_A[4:].any() and not slotted.lora_B[:, 4:].any()


def test_a_saved_layer_loads_back_with_its_rank():
    _, slotted = pair()
    slotted.resize([0, 1, 2], grow=2)
    fresh = pair()[1]
    fresh.load_state_dict(slotted.state_dict())
    assert fresh.rank == 5 and fresh.live.tolist() == slotted.live.tolist()
    x = torch.randn(3, 16)
    assert torch.equal(fresh(x), slotted(x))


def test_a_compiled_model_is_not_compiled_again_at_a_resize():
    torch.manual_seed(0)
    layers = [LoraLayer(nn.Linear(16, 16), 2, alpha=4, capacity=6) for _ in range(3)]
    model = nn.Sequential(*layers)
    compiled = [0]

    def backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):  # counts, runs the graph as it is
        compiled[0] += 1
        return gm.forward

    step = torch.compile(model, backend=backend)
    x = torch.randn(4, 16)
    seen = []
    for event in range(6):
        step(x).sum().backward()
        giver, taker = layers[event % 3], layers[(event + 1) % 3]
        if giver.rank > 1:
            giver.resize(list(range(giver.rank - 1)))
            taker.resize(list(range(taker.rank)), grow=1)
        seen.append(compiled[0])
    assert seen[-1] == seen[1], seen  # no graph after the first resize's
    assert sum(layer.rank for layer in layers) == 6


@pytest.mark.parametrize("kw", [{}, {"use_gate": True, "input_gate": True}], ids=["plain", "gated"])
def test_switching_slots_off_stops_them_as_requires_grad_does_with_the_same_parameters(kw):
    """A switched-off adapter in rank slots keeps ``requires_grad`` (what an engine holds never changes); its
    gradients are zero and are dropped before the optimizer steps, so AdamW with weight decay trains exactly as
    with the plain layer switched off by ``requires_grad``: same outputs, same parameters, same moments."""
    from dynlora.core.switch import SkipSwitchedOff

    plain, slotted = pair(**kw)
    held = {"plain": plain, "slotted": slotted}
    optimizers = {k: torch.optim.AdamW([p for p in layer.parameters() if p is not layer.base.weight
                                        and p is not layer.base.bias], lr=1e-2, weight_decay=0.1)
                  for k, layer in held.items()}
    skip = SkipSwitchedOff({"slotted": slotted})
    skip.install(optimizers["slotted"])
    params = [id(p) for p in slotted.parameters()]
    x = torch.randn(6, 16)
    for step in range(8):
        on = step not in (2, 3, 4)  # off for three steps, then on again
        for layer in held.values():
            layer.switch(on)
        assert all(p.requires_grad for p in slotted.adapter_parameters())  # the slots never stop asking
        assert all(p.requires_grad == on for p in plain.adapter_parameters())
        outs = {}
        for key, layer in held.items():
            optimizers[key].zero_grad()
            outs[key] = layer(x)
            outs[key].square().sum().backward()
        assert_within_rounding(outs["slotted"], outs["plain"], TERMS, name="output")
        if not on:
            assert all(p.grad is None or not p.grad.any() for p in slotted.adapter_parameters())  # zero
        for opt in optimizers.values():
            opt.step()
        if not on:
            assert all(p.grad is None for p in slotted.adapter_parameters())  # dropped before the step
    assert [id(p) for p in slotted.parameters()] == params
    assert_within_rounding(slotted.live_slots(slotted.lora_A.detach()), plain.lora_A.detach(), TERMS * 8, name="A")
    assert_within_rounding(slotted.live_slots(slotted.lora_B.detach(), 1), plain.lora_B.detach(), TERMS * 8,
                           name="B")
    dead = slotted.lora_A.detach()[RANK:]
    assert not dead.any()  # dead slots never moved
