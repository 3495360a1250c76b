"""Trackers collect their signal and decide nothing: activation norms, gradient norms, EMA, sensitivity."""

import pytest
import torch
from torch import nn

from dynlora.decide.plan import Resize
from dynlora.observe import ActivationNorm, GradientNorm, Sensitivity, follow_ranks
from tests.conftest import adapted_bert, labelled_batch
from tests.tolerance import assert_within_rounding, chain_terms


def test_activation_tracker_takes_the_norm_of_the_adapters_outputs_over_the_steps_training_passes_only():
    model, layers = adapted_bert()
    tracker = ActivationNorm()
    tracker.attach(layers)
    expected = {n: 0.0 for n in layers}  # sum of squares over the step's micro-batches

    def record(module, args, out, name):
        if module.training:  # the adapter's own output dW x, not the layer's (W + dW) x
            expected[name] += float((out - module.base(args[0])).detach().double().norm()) ** 2

    for name, layer in layers.items():
        layer.register_forward_hook(lambda m, a, out, name=name: record(m, a, out, name))
    model.train()
    for step in range(2):
        model(input_ids=labelled_batch(step)[0])
    model.eval()
    model(input_ids=labelled_batch(9)[0])  # evaluation passes do not count
    tracker.step(layers)
    expected = {n: v ** 0.5 for n, v in expected.items()}  # = the norm over both micro-batches at once
    # the same squares (2 micro-batches x 80 tokens x at most 64 outputs) summed in another order; the
    # reference subtracts the base's output (64 terms a row) from the layer's, the tracker works in rank space
    _within_rounding(tracker.raw, expected, terms=2 * 80 * 64 * 8)
    assert all(v > 0 for v in expected.values())
    scores = tracker.scores()  # each divided by their sum, then summed again: 2 roundings per score
    assert_within_rounding(torch.tensor(sum(scores.values())), torch.tensor(1.0), terms=2 * len(scores))


def test_gradient_tracker_counts_once_per_optimizer_step():
    model, layers = adapted_bert()
    tracker = GradientNorm()
    tracker.attach(layers)
    model.train()
    for micro in range(4):  # gradient accumulation: four backward passes, one optimizer step
        ids, labels = labelled_batch(micro)
        nn.functional.cross_entropy(model(input_ids=ids).logits, labels).backward()
    tracker.step(layers)
    for name, layer in layers.items():
        expected = torch.sqrt(layer.lora_A.grad.pow(2).sum() + layer.lora_B.grad.pow(2).sum())
        terms = layer.lora_A.numel() + layer.lora_B.numel()  # the same squares, summed in another order
        _within_rounding({name: tracker.raw[name]}, {name: float(expected)}, terms)


def test_activation_score_measures_the_adapter_not_the_frozen_base():
    """The defect it fixes: scored on (W + dW) x, a change of dW moved the normalised scores by < 1e-3."""
    model, layers = adapted_bert(dropout=False)
    ids = labelled_batch(0)[0]
    model.train()

    def scores() -> dict[str, float]:
        tracker = ActivationNorm()
        tracker.attach(layers)
        model(input_ids=ids)
        tracker.step(layers)
        tracker.detach()
        return tracker.raw

    name = next(iter(layers))
    before = scores()
    with torch.no_grad():
        layers[name].base.weight.mul_(3.0)  # the base of the first module only: its input stays the same
    assert scores()[name] == pytest.approx(before[name], rel=1e-5)
    with torch.no_grad():
        layers[name].lora_B.mul_(4.0)  # its adapter four times larger: four times the score
    assert scores()[name] == pytest.approx(4 * before[name], rel=1e-5)
    with torch.no_grad():
        layers[name].lora_B.zero_()
    assert scores()[name] == 0.0


def test_forecast_is_the_norm_of_the_loss_gradient_with_respect_to_b():
    """A probe's signal while every B is 0: |dL/dB|, with no parameter getting a gradient."""
    model, layers = adapted_bert(dropout=False)
    model.requires_grad_(False)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.zero_()
    ids, labels = labelled_batch(0)
    model.train()
    tracker = ActivationNorm()
    tracker.attach(layers)
    tracker.restart(forecast=True)
    for half in (slice(0, 4), slice(4, 8)):  # two micro-batches, one optimizer step
        nn.functional.cross_entropy(model(input_ids=ids[half]).logits, labels[half], reduction="sum").backward()
    tracker.step(layers)
    assert all(p.grad is None for p in model.parameters())
    tracker.detach()
    for layer in layers.values():  # the reference: B itself asks for its gradient, over the whole batch at once
        layer.lora_B.requires_grad_(True)
    nn.functional.cross_entropy(model(input_ids=ids).logits, labels, reduction="sum").backward()
    expected = {n: float(layer.lora_B.grad.norm()) for n, layer in layers.items()}  # the scale is in dL/dB
    assert all(v > 0 for v in expected.values())
    for name, value in expected.items():
        assert tracker.raw[name] == pytest.approx(value, rel=1e-4)
    tracker.restart()
    assert not tracker.forecast and set(tracker.raw.values()) == {0.0}


def test_gradient_score_is_the_mean_over_the_steps_a_module_was_observed_in_its_last_period():
    from dynlora.core.layer import LoraLayer

    layers = {"a": LoraLayer(nn.Linear(3, 4), rank=1, alpha=1.0), "b": LoraLayer(nn.Linear(3, 4), rank=1, alpha=1.0)}
    tracker = GradientNorm()
    tracker.attach(layers)

    def step(norms: dict[str, float]) -> None:  # a gradient of norm n on B, none on A; absent: no gradient
        for name, layer in layers.items():
            layer.lora_A.grad = None
            layer.lora_B.grad = torch.tensor([[norms[name]], [0.0], [0.0], [0.0]]) if name in norms else None
        tracker.step(layers)

    step({"a": 4.0, "b": 4.0})
    tracker.new_period()  # a decision; then b is switched off: no gradient, not observed
    for value in (2.0, 1.0, 3.0):
        step({"a": value})
    assert tracker.raw == {"a": 2.0, "b": 4.0}  # a sum over the run would have locked a in: 10 against 4
    restored = GradientNorm()
    restored.load_state_dict(tracker.state_dict())
    assert restored.raw == tracker.raw


def test_sensitivity_sums_or_averages_over_a_ranks_elements():
    """AdaLoRA's triplet score averages |theta * grad| over A's row and B's column; the default sums them."""
    from dynlora.core.layer import LoraLayer

    layers = {"narrow": LoraLayer(nn.Linear(4, 4), rank=2, alpha=2.0),
              "wide": LoraLayer(nn.Linear(64, 64), rank=2, alpha=2.0)}
    for layer in layers.values():  # every element the same |theta * grad| = 0.5 * 0.2
        for p in (layer.lora_A, layer.lora_B):
            p.data.fill_(0.5)
            p.grad = torch.full_like(p, 0.2)
    for elements, expected in (("mean", {"narrow": 0.2, "wide": 0.2}), ("sum", {"narrow": 0.8, "wide": 12.8})):
        tracker = Sensitivity(beta=0.0, elements=elements)
        tracker.attach(layers)
        tracker.step(layers)
        for name in layers:
            assert torch.allclose(tracker.rank_scores(name), torch.full((2,), expected[name]))
    with pytest.raises(ValueError, match="elements"):
        Sensitivity(elements="max")


def test_decay_is_an_exponential_moving_average():
    tracker = GradientNorm(decay=0.5)
    tracker.fold({"a": 4.0})
    tracker.fold({"a": 2.0})
    assert tracker.raw["a"] == 3.0


def test_sensitivity_follows_a_resize_and_predicts_its_scores():
    model, layers = adapted_bert()
    tracker = Sensitivity(beta=0.5)
    tracker.attach(layers)
    model.train()
    ids, labels = labelled_batch(0)
    nn.functional.cross_entropy(model(input_ids=ids).logits, labels).backward()
    tracker.step(layers)
    name = next(iter(layers))
    before = tracker.rank_scores(name).clone()
    predicted = tracker.scores_after({name: Resize(keep=(0, 2), grow=1)})
    tracker.follow(name, [0, 2], 1)
    after = tracker.rank_scores(name)
    assert torch.equal(after[:2], before[[0, 2]]) and after[2] == before[[0, 2]].mean()  # new rank: the kept mean
    assert tracker.scores() == predicted
    assert torch.equal(follow_ranks(torch.tensor([1.0, 3.0]), [], 2), torch.zeros(2))


def test_activation_tracker_counts_a_checkpointed_block_once():
    from torch.utils.checkpoint import checkpoint

    model, layers = adapted_bert(dropout=False)
    plain, checked = ActivationNorm(), ActivationNorm()
    plain.attach(layers)
    model.train()
    ids, labels = labelled_batch(0)
    nn.functional.cross_entropy(model(input_ids=ids).logits, labels).backward()
    plain.step(layers)
    plain.detach()
    checked.attach(layers)
    encoder = model.bert.encoder
    for i, block in enumerate(encoder.layer):
        forward = block.forward
        block.forward = lambda *a, forward=forward, **k: checkpoint(forward, *a, use_reentrant=False, **k)
    nn.functional.cross_entropy(model(input_ids=ids).logits, labels).backward()
    checked.step(layers)
    # the recomputed forward is the same computation; the gradients' sums over the 80 tokens may be taken in
    # another order, and the norm sums each adapter's squares
    _within_rounding(checked.raw, plain.raw, terms=chain_terms(layers=2, hidden=32, intermediate=64, seq=10,
                                                               batch_tokens=80) + 64 * 4 * 2)


def test_activation_scores_of_one_batch_equal_two_accumulated_halves():
    model, layers = adapted_bert(dropout=False)
    whole, halves = ActivationNorm(), ActivationNorm()
    ids = torch.cat([labelled_batch(0)[0], labelled_batch(1)[0]])  # (16, 10)
    model.train()
    whole.attach(layers)
    model(input_ids=ids)
    whole.step(layers)
    whole.detach()
    halves.attach(layers)
    model(input_ids=ids[:8])
    model(input_ids=ids[8:])
    halves.step(layers)
    _within_rounding(halves.raw, whole.raw, terms=160 * 64)  # the same squares, 160 tokens x at most 64 outputs


def _within_rounding(actual: dict[str, float], expected: dict[str, float], terms: int) -> None:
    """Scores keyed by module, each within ``terms`` roundings of its own size."""
    assert actual.keys() == expected.keys()
    for name in expected:
        assert_within_rounding(torch.tensor([actual[name]]), torch.tensor([expected[name]]), terms, name=name)


def test_sensitivity_pools_a_modules_ranks_by_sum_mean_or_min():
    scores = {"wide": torch.tensor([4.0, 4.0, 0.5, 0.5]), "full": torch.tensor([2.0, 2.0])}
    pooled = {}
    for pool in ("sum", "mean", "min"):
        tracker = Sensitivity(pool=pool)
        tracker.ema = dict(scores)
        pooled[pool] = tracker.scores()
    assert pooled["sum"] == pytest.approx({"wide": 9 / 13, "full": 4 / 13})  # grows with the ranks held
    assert pooled["mean"] == pytest.approx({"wide": 9 / 17, "full": 8 / 17})
    assert pooled["min"] == pytest.approx({"wide": 0.2, "full": 0.8})  # every rank of "full" is needed
    with pytest.raises(ValueError, match="pool"):
        Sensitivity(pool="max")
