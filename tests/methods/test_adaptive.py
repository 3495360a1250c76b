"""Adaptive: proportional reallocation under a fixed budget, the input gate, its export, resume."""

from dataclasses import replace

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from dynlora.control.controller import Controller
from dynlora.core.inject import AdapterConfig, adapters, inject
from dynlora.decide.plan import Resize
from dynlora.errors import DynloraError
from dynlora.io.checkpoint import load_checkpoint, save_checkpoint
from dynlora.io.export import export_peft
from dynlora.io.input_gates import calibrate_input_gates, constant_input_gates
from dynlora.methods.adaptive import Adaptive, AdaptiveConfig
from tests.conftest import tiny_bert, train_steps
from tests.tolerance import assert_within_rounding, chain_terms

STEPS = 24
CFG = AdaptiveConfig(interval=4, warmup=0.2, max_moves=0.25)
# tiny BERT (2 layers, hidden 32, feed-forward 64) on batches of 10 tokens
TERMS = chain_terms(layers=2, hidden=32, intermediate=64, seq=10)


def _batch(step: int):
    g = torch.Generator().manual_seed(700 + step)
    return torch.randint(1, 100, (8, 10), generator=g), torch.randint(0, 2, (8,), generator=g)


def _setup(cfg: AdaptiveConfig = CFG, gate: bool = True):
    model = tiny_bert()
    inject(model, AdapterConfig(rank=4, alpha=8, input_gate=gate), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    controller = Controller(model, Adaptive(cfg, total_steps=STEPS), optimizer=opt, seed=0)
    return model, opt, controller


def _train(model, opt, controller, until):
    return train_steps(model, opt, controller, until, _batch)


def test_budget_conserved_at_every_event_and_ranks_follow_importance():
    model, opt, controller = _setup()
    budget = sum(controller.ranks().values())
    _train(model, opt, controller, STEPS)
    events = [r for r in controller.history if r["event"] == "realloc"]
    assert [r["step"] for r in events] == [8, 12, 16, 20]  # after a warm-up of 4, every 4, not at the end
    assert all(r["total_rank"] == budget for r in events)
    assert all(r["moved"] <= max(1, int(0.25 * budget)) for r in events)
    assert sum(r["moved"] for r in events) > 0
    final = controller.ranks()
    assert "importance" not in events[-1]  # no fade can finish after the last event: it only completes
    last = events[-2]["importance"]
    top, bottom = max(last, key=last.get), min(last, key=last.get)
    assert final[top] >= final[bottom]


def test_growing_keeps_the_output():
    model, opt, controller = _setup()
    _train(model, opt, controller, 6)
    ids, _ = _batch(50)
    model.eval()
    with torch.no_grad():
        y = model(input_ids=ids).logits
        name = next(iter(controller.layers))
        controller.resize({name: __import__("dynlora").Resize(keep=tuple(range(4)), grow=3)})
        # the new ranks add exact zeros; the 7 ranks may be summed in another order than the 4
        assert_within_rounding(model(input_ids=ids).logits, y, TERMS)


def test_input_gate_starts_near_one_so_the_first_forward_matches_plain_lora():
    torch.manual_seed(0)
    gated, plain = tiny_bert(), tiny_bert()
    inject(gated, AdapterConfig(rank=4, input_gate=True), generator=torch.Generator().manual_seed(1))
    inject(plain, AdapterConfig(rank=4), generator=torch.Generator().manual_seed(1))
    ids, _ = _batch(0)
    with torch.no_grad():
        for a, b in zip(adapters(gated).values(), adapters(plain).values()):
            b.lora_B.normal_(std=0.05)
            a.lora_B.copy_(b.lora_B)
        ref = tiny_bert()(input_ids=ids).logits
        y_gated, y_plain = gated(input_ids=ids).logits, plain(input_ids=ids).logits
    # not rounding: the gate starts at sigmoid(b) > 0.98, not 1, so the gated adapter adds at least 98% of the
    # plain one's effect; the bound is 5% of that effect (y_plain - ref), plus float32's rounding of the logits
    assert torch.allclose(y_gated, y_plain, atol=0.05 * float((y_plain - ref).abs().max()) + 1e-6)
    layer = next(iter(adapters(gated).values()))
    assert float(layer.input_gate_values(torch.randn(3, layer.in_features)).min()) > 0.98
    assert layer.input_gate_flops() == 2 * layer.in_features + 4 + layer.rank


def test_export_refuses_then_approximates_with_a_calibration_set(tmp_path):
    model, opt, controller = _setup()
    _train(model, opt, controller, STEPS)
    with pytest.raises(DynloraError, match="input-dependent gate"):
        export_peft(model, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    batches = [{"input_ids": _batch(100 + i)[0]} for i in range(3)]
    means = calibrate_input_gates(model, batches)
    assert set(means) == set(controller.layers) and all(0 < m < 1 for m in means.values())
    export_peft(model, tmp_path / "adapter", gate_means=means)
    base = tiny_bert()
    base.save_pretrained(tmp_path / "base")
    plain = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tmp_path / "base"),
                                      str(tmp_path / "adapter")).eval()
    ids = batches[0]["input_ids"]
    model.eval()
    with torch.no_grad(), constant_input_gates(model, means):
        folded = model(input_ids=ids).logits
    with torch.no_grad():
        # PEFT's forward against dynlora's with the gates held at their means (folded into B on export)
        assert_within_rounding(plain(input_ids=ids).logits, folded, TERMS + 2)
        exact = model(input_ids=ids).logits
    assert float((exact - folded).abs().max()) > 0  # it is an approximation, and the error is measurable


def test_exact_save_keeps_the_input_gate(tmp_path):
    model, opt, controller = _setup()
    _train(model, opt, controller, 10)
    save_checkpoint(tmp_path / "exact", model, controller)
    other, _, other_controller = _setup()
    load_checkpoint(tmp_path / "exact", other, other_controller)
    ids, _ = _batch(3)
    model.eval(), other.eval()
    with torch.no_grad():  # the same weights, input gate included, in the same computation
        assert torch.equal(other(input_ids=ids).logits, model(input_ids=ids).logits)


def test_resume_equals_straight_through(tmp_path):
    straight = _train(*_setup(), STEPS)
    model, opt, controller = _setup()
    first = _train(model, opt, controller, 13)
    save_checkpoint(tmp_path / "ckpt", model, controller, opt)
    model, opt, controller = _setup()
    load_checkpoint(tmp_path / "ckpt", model, controller, opt)
    assert first + _train(model, opt, controller, STEPS) == straight


def test_config_errors():
    for kwargs in ({"score": "x"}, {"beta": 1.0}, {"interval": 0}, {"max_moves": 0}, {"warmup": -1},
                   {"warmup": 2.5}, {"max_rank": 0}):
        with pytest.raises(DynloraError):
            AdaptiveConfig(**kwargs)
    with pytest.raises(DynloraError, match="a run of 20 steps ends first"):
        Adaptive(AdaptiveConfig(interval=30), total_steps=20)


@pytest.mark.parametrize("refactor", [False, True])
def test_no_resize_moves_the_output_and_faded_ranks_are_the_ones_cut(refactor):
    model, opt, controller = _setup(replace(CFG, refactor=refactor))
    ids, _ = _batch(77)
    changes = []

    def checked(apply):
        return lambda plan: _unmoved(apply, plan)

    def _unmoved(apply, plan):
        was = model.training
        model.eval()
        with torch.no_grad():
            before = model(input_ids=ids).logits
            result = apply(plan)
            after = model(input_ids=ids).logits
        model.train(was)
        changes.append(float((after - before).abs().max()))
        return result

    resize, refactor = controller.resize, controller.refactor
    controller.resize, controller.refactor = checked(resize), checked(refactor)
    _train(model, opt, controller, STEPS)
    events = [r for r in controller.history if r["event"] == "realloc"]
    assert len(changes) == 2 * len(events) and max(changes) < 1e-5  # each event resizes, then re-factorises
    assert sum(r["removed"] for r in events) > 0 and all(r["removed"] == r["grown"] for r in events)


@pytest.mark.parametrize("refactor", [True, False])
def test_a_giving_module_is_refactorised_and_its_weakest_directions_fade(refactor):
    model, opt, controller = _setup(replace(CFG, refactor=refactor), gate=False)
    plans = []
    apply = controller.apply

    def spy(plan):  # each fading module's rank once the plan's resizes are done
        ranks = {n: (len(plan.resizes[n].keep) + plan.resizes[n].grow if n in plan.resizes
                     else controller.layers[n].rank) for n in plan.fade}
        plans.append((plan, ranks))
        return apply(plan)

    controller.apply = spy
    _train(model, opt, controller, STEPS)
    fading = [(p, ranks) for p, ranks in plans if p.fade]
    assert fading
    for plan, rank in fading:
        assert plan.refactor == (tuple(plan.fade) if refactor else ())
        if refactor:  # strongest first after the re-factorisation: the fading ranks are the last ones
            assert all(ranks == tuple(range(rank[n] - len(ranks), rank[n])) for n, ranks in plan.fade.items())


def test_a_module_receives_ranks_only_while_the_ranks_it_holds_are_in_use():
    model, opt, controller = _setup(replace(CFG, saturation=0.05), gate=False)
    method = controller.method
    layers = dict(controller.layers)
    name, other = list(layers)[:2]
    with torch.no_grad():  # B's columns parallel: one direction over four ranks, three of them idle
        layers[name].lora_B.copy_(torch.randn(layers[name].out_features, 1) * torch.tensor([[1.0, 0.5, -1.0, 2.0]]))
        layers[other].lora_B.normal_()
    ready = method._in_use(layers, {})
    assert ready[name] is False and ready[other] is True
    assert method._in_use(layers, {other: Resize(keep=(0, 1, 2, 3), grow=1)})[other] is False  # fresh ranks: B zero
    assert method._in_use(layers, {other: Resize(keep=(), grow=0)})[other] is True  # nothing held idle


def test_when_no_module_has_all_its_ranks_in_use_no_rank_moves():
    model, opt, controller = _setup(replace(CFG, saturation=1.0), gate=False)
    before = controller.ranks()
    _train(model, opt, controller, STEPS)
    assert controller.ranks() == before
    assert sum(r["moved"] for r in controller.history if r["event"] == "realloc") == 0
