"""Switching adapters off, and folding the ones that do not train into their base weights."""

import pytest
import torch
from torch import nn

from dynlora.core.layer import LoraLayer
from dynlora.core.switch import can_fold, fold, keep_backward, set_trainable, unfold
from tests.conftest import adapted_bert, tokens
from tests.tolerance import assert_within_rounding, chain_terms, rounding_bound

# a folded adapter's delta is summed over its 4 ranks into the weight (2 roundings: in, and out again), then
# the input sums over it with the base: another order of the same sums, through adapted_bert's tiny BERT
# (2 layers, hidden 32, feed-forward 64) on 8 tokens
FOLD_TERMS = chain_terms(layers=2, hidden=32, intermediate=64, seq=8) + 4 + 2


def test_ten_fold_cycles_move_neither_the_weights_nor_the_output_beyond_float32_rounding():
    model, layers = adapted_bert(dropout=False)
    off = sorted(layers)[::2]
    base = {n: layers[n].base.weight.detach().clone() for n in off}
    batch = tokens()
    with torch.no_grad():
        before = model(**batch).logits
        for cycle in range(10):
            assert fold(layers, off) == set(off)
            if cycle == 0:
                merged = {n: layers[n].base.weight.detach().clone() for n in off}
            assert_within_rounding(model(**batch).logits, before, FOLD_TERMS)  # folded == unfolded
            unfold(layers, off)
        after = model(**batch).logits
    for n in off:  # each cycle rounds W + delta and W again: 2 roundings of the merged weight's size, 10 times
        drift = float((layers[n].base.weight - base[n]).abs().max())
        assert drift <= rounding_bound(merged[n], terms=2, steps=10), n
    assert_within_rounding(after, before, FOLD_TERMS, steps=10)
    assert not any(layer.merged for layer in layers.values())


def test_only_exact_folds_happen():
    def layer(**kw):
        base = nn.Linear(6, 4)
        return LoraLayer(base.to(kw.pop("base_dtype", torch.float32)), rank=2, alpha=4.0, **kw)

    assert can_fold(layer())
    assert not can_fold(layer(base_dtype=torch.bfloat16))  # a bf16 base would round at each fold
    assert not can_fold(layer(dropout=0.1))
    assert not can_fold(layer(input_gate=True))
    assert not can_fold(LoraLayer(nn.Linear(6, 4), rank=0, alpha=4.0))
    layers = {"a": layer(), "b": layer(base_dtype=torch.bfloat16)}
    assert fold(layers, ["a", "b"]) == {"a"} and layers["a"].merged and not layers["b"].merged


def test_a_folded_layer_saves_and_loads_like_an_unfolded_one():
    model, layers = adapted_bert(dropout=False)
    plain = {k: v.clone() for k, v in model.state_dict().items()}  # the live tensors change in a fold
    fold(layers, list(layers))
    saved, live = model.state_dict(), dict(model.named_parameters())  # live: the folded weights, W + delta
    assert saved.keys() == plain.keys()
    for key in plain:  # the base weight without delta: (W + delta) - delta, 2 roundings of the folded weight's size
        assert float((saved[key] - plain[key]).abs().max()) <= rounding_bound(live.get(key, plain[key]), 2), key
    fresh, _ = adapted_bert(dropout=False)
    with torch.no_grad():
        for layer in [m for m in fresh.modules() if isinstance(m, LoraLayer)]:
            layer.lora_B.zero_()
    fresh.load_state_dict(saved)  # an unfolded model gets the same function
    assert_within_rounding(fresh(**tokens()).logits, model(**tokens()).logits, FOLD_TERMS + 2)
    model.load_state_dict(fresh.state_dict())  # into folded layers: unfolded, loaded, folded again
    assert all(layer.merged for layer in layers.values())
    assert_within_rounding(model(**tokens()).logits, fresh(**tokens()).logits, FOLD_TERMS + 4)


def _adapter_parameters(layer: LoraLayer) -> list[nn.Parameter]:
    return [p for name, p in layer.named_parameters() if not name.startswith("base.")]


@pytest.mark.parametrize("on", [True, False])
def test_set_trainable_keeps_optimizer_relevant_state(on):
    layer = LoraLayer(nn.Linear(6, 4), rank=2, alpha=4.0, use_gate=True, input_gate=True)
    layer(torch.randn(3, 6)).sum().backward()
    set_trainable({"x": layer}, ["x"] if on else [])
    assert all(p.requires_grad == on for p in _adapter_parameters(layer))  # the input gate too
    assert all((p.grad is not None) == on for p in _adapter_parameters(layer))


def test_switched_on_or_off_survives_rank_zero_and_growing_back():
    """Rank 0 stops every adapter's training (DDP without find_unused_parameters); growing back restores what the
    switch said: an active adapter trains again, a switched-off one stays off."""
    layers = {name: LoraLayer(nn.Linear(6, 4), rank=2, alpha=4.0, use_gate=True, input_gate=True)
              for name in ("on", "off")}
    set_trainable(layers, ["on"])
    for layer in layers.values():
        layer.resize(keep=[])
        assert not any(p.requires_grad for p in _adapter_parameters(layer))
    set_trainable(layers, ["on"])  # a switch while at rank 0 does not make the empty adapter train
    assert not any(p.requires_grad for layer in layers.values() for p in _adapter_parameters(layer))
    for layer in layers.values():
        layer.resize(keep=[], grow=1)
    assert all(p.requires_grad for p in _adapter_parameters(layers["on"]))
    assert not any(p.requires_grad for p in _adapter_parameters(layers["off"]))


def test_a_step_where_nothing_trains_still_runs_backward_and_changes_nothing():
    from dynlora.core.inject import AdapterConfig, inject
    from tests.conftest import tiny_llama

    model = tiny_llama(lm=True)  # a causal LM: no trainable head
    layers = inject(model, AdapterConfig(rank=2, alpha=4))
    set_trainable(layers, ())
    ids = torch.randint(1, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    model.train()
    with pytest.raises(RuntimeError, match="does not require grad"):
        model(input_ids=ids, labels=ids).loss.backward()
    handle = keep_backward(model)
    out = model(input_ids=ids, labels=ids)
    loss = out.loss
    loss *= 2.0  # the Trainer scales the loss in place
    loss.backward()
    nn.functional.cross_entropy(out.logits.flatten(0, 1), ids.flatten()).backward()  # a loss of its own (TRL)
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    assert not model(input_ids=ids).logits.requires_grad  # evaluation untouched
    set_trainable(layers, sorted(layers)[:1])
    model.train()
    trained = model(input_ids=ids, labels=ids).loss
    assert trained.grad_fn is not None and not trained.grad_fn.name().startswith("Clone")  # real graph, no copy
    handle.remove()
