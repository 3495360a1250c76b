"""Module allocation: inactive adapters freeze, schedules fire on optimizer steps, selections repeat."""

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from dynlora.control.controller import Controller
from dynlora.core.count import trainable_parameters
from dynlora.core.switch import set_trainable
from dynlora.errors import DynloraError
from dynlora.hf.callback import DynloraCallback
from dynlora.hf.memory import SavedTensorBytes
from dynlora.methods.module_alloc import ModuleAlloc, ModuleAllocConfig, parse_variant
from tests.conftest import adapted_bert, labelled_batch
from tests.tolerance import assert_within_rounding, chain_terms


def test_inactive_adapters_get_no_gradient_do_not_change_and_keep_optimizer_state():
    model, layers = adapted_bert()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    ids, labels = labelled_batch(0)
    nn.functional.cross_entropy(model(input_ids=ids).logits, labels).backward()
    opt.step()
    opt.zero_grad()
    names = list(layers)
    off = names[::2]
    before_params = trainable_parameters(model)
    set_trainable(layers, tuple(n for n in names if n not in off))
    assert trainable_parameters(model) < before_params
    frozen = {n: (layers[n].lora_A.detach().clone(), {k: v.clone() for k, v in opt.state[layers[n].lora_A].items()})
              for n in off}
    for step in range(1, 4):
        ids, labels = labelled_batch(step)
        nn.functional.cross_entropy(model(input_ids=ids).logits, labels).backward()
        for n in off:
            assert layers[n].lora_A.grad is None and layers[n].lora_B.grad is None
        opt.step()
        opt.zero_grad()
    for n, (weight, state) in frozen.items():
        assert torch.equal(layers[n].lora_A, weight)
        assert all(torch.equal(opt.state[layers[n].lora_A][k], v) for k, v in state.items())
    on = [n for n in names if n not in off]
    assert not torch.equal(layers[on[0]].lora_B, torch.zeros_like(layers[on[0]].lora_B))


def test_fewer_active_adapters_save_fewer_activations():
    model, layers = adapted_bert()
    model.train()
    ids, _ = labelled_batch(0)

    def saved() -> int:
        with SavedTensorBytes(model) as counter:
            model(input_ids=ids).logits.sum().backward()
        model.zero_grad()
        return counter.bytes

    everything = saved()
    late = tuple(n for n in layers if ".layer.1." in n)  # only the last block trains
    set_trainable(layers, late)
    assert saved() < 0.8 * everything


@pytest.mark.parametrize("accumulation", [1, 4])
def test_schedule_fires_on_optimizer_steps_under_accumulation(accumulation, tmp_path):
    model, layers = adapted_bert()
    method = ModuleAlloc(ModuleAllocConfig(score="gradient", strategy="topk", schedule="every:3", k=0.5), 12)
    controller = Controller(model, method, seed=0)
    data = [{"input_ids": labelled_batch(i)[0][0], "labels": int(labelled_batch(i)[1][0])} for i in range(200)]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2,
                             gradient_accumulation_steps=accumulation, max_steps=12, report_to="none",
                             save_strategy="no", use_cpu=True, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[DynloraCallback(controller)]).train()
    events = [row for row in controller.history if row["event"] == "select"]
    assert [row["step"] for row in events] == [3, 6, 9]
    assert all(len(row["active"]) == round(0.5 * len(layers)) for row in events)
    active = set(events[-1]["active"])
    assert {n for n, layer in layers.items() if layer.lora_A.requires_grad} == active


def test_same_seed_same_selections_for_random_strategies():
    def run():
        model, layers = adapted_bert()
        method = ModuleAlloc(ModuleAllocConfig(strategy="discounted", schedule="every:2", k=0.3), 10)
        controller = Controller(model, method, seed=3)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        model.train()
        for step in range(10):
            ids, labels = labelled_batch(step)
            nn.functional.cross_entropy(model(input_ids=ids).logits, labels).backward()
            opt.step()
            controller.step()
            opt.zero_grad()
        return [row["active"] for row in controller.history if row["event"] == "select"]

    first = run()
    assert first == run() and len(first) == 4  # every adapter trains until the first selection, then every 2 steps


def test_variants_and_config_errors():
    cfg = parse_variant("topk-gradient", ModuleAllocConfig())
    assert (cfg.strategy, cfg.score) == ("topk", "gradient")
    assert parse_variant("uniform", ModuleAllocConfig()).strategy == "uniform"
    for kwargs in ({"score": "x"}, {"strategy": "x"}, {"k": 0}, {"k": 2.5}, {"threshold": 0},
                   {"schedule": "every"}, {"schedule": "daily:3"}, {"decay": 1.0}):
        with pytest.raises(DynloraError):
            ModuleAllocConfig(**kwargs)
    with pytest.raises(DynloraError):
        ModuleAlloc(ModuleAllocConfig(schedule="once:50"), 20)


def test_a_probe_trains_nothing_scores_the_forecast_and_costs_less_before_the_first_selection():
    from tests.conftest import train_steps

    model, layers = adapted_bert()
    method = ModuleAlloc(ModuleAllocConfig(probe=2, schedule="every:4", k=0.5), total_steps=12)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    controller = Controller(model, method, optimizer=opt)
    assert [e.event for e in controller.history] == ["init", "select"] and controller.active == ()
    ids, _ = labelled_batch(0)
    model.train()
    with SavedTensorBytes(model) as counter:
        model(input_ids=ids).logits.sum().backward()
    model.zero_grad()
    frozen_bytes = counter.bytes
    before = {n: layer.lora_B.detach().clone() for n, layer in layers.items()}
    train_steps(model, opt, controller, 2, labelled_batch)
    assert all(torch.equal(layers[n].lora_B, b) for n, b in before.items())  # nothing trained during the probe
    selection = controller.history[-1]
    assert selection.event == "select" and selection.step == 2 and len(controller.active) == len(layers) // 2
    assert all(v > 0 for v in selection.detail["scores"].values())  # every B is 0: scored by the forecast
    set_trainable(layers, tuple(layers))
    with SavedTensorBytes(model) as counter:
        model(input_ids=ids).logits.sum().backward()
    assert frozen_bytes < 0.8 * counter.bytes  # the probe's steps cost less than training every adapter
    train_steps(model, opt, controller, 12, labelled_batch)
    assert [e.step for e in controller.history if e.event == "select"] == [0, 2, 4, 8]


def test_a_probe_needs_activation_scores():
    with pytest.raises(DynloraError, match="probe"):
        ModuleAllocConfig(probe=2, score="gradient")


@pytest.mark.parametrize("fold", [True, False])
def test_adapters_that_do_not_train_are_folded_until_they_train_again(fold):
    """Folded, a frozen adapter costs nothing; it comes back as it was; the run ends unfolded."""
    from tests.conftest import train_steps

    model, layers = adapted_bert(dropout=False)
    config = ModuleAllocConfig(schedule="every:3", k=0.5, strategy="uniform", fold=fold)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    controller = Controller(model, ModuleAlloc(config, total_steps=12), optimizer=opt, seed=0)
    for until in (3, 6, 9):  # three selections: adapters go off and come back
        train_steps(model, opt, controller, until, labelled_batch)
        off = set(layers) - set(controller.active)
        assert {n for n, layer in layers.items() if layer.merged} == (off if fold else set())
        assert controller.folded == (off if fold else set())
    base = {n: layer.base.weight.detach().clone() for n, layer in layers.items()}
    controller.finish()
    assert not any(layer.merged for layer in layers.values()) and not controller.folded
    if fold:  # unfolding took each folded delta back out
        assert max(float((layers[n].base.weight - base[n]).abs().max()) for n in off) > 0
    assert controller.history[-1].event == "end"


def test_folded_and_unfolded_runs_agree_to_float32_rounding():
    def run(fold: bool) -> torch.Tensor:
        from tests.conftest import tokens, train_steps

        model, layers = adapted_bert(dropout=False)
        config = ModuleAllocConfig(schedule="every:2", k=0.5, fold=fold)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        controller = Controller(model, ModuleAlloc(config, total_steps=8), optimizer=opt, seed=0)
        train_steps(model, opt, controller, 8, labelled_batch)
        controller.finish()
        with torch.no_grad():
            return model.eval()(**tokens()).logits

    # frozen adapters folded into their base weights: each step's forward sums the same products in another order
    # (tiny BERT: 2 layers, hidden 32, feed-forward 64; batches of 8 x 10 tokens; folds round twice), 8 steps
    terms = chain_terms(layers=2, hidden=32, intermediate=64, seq=10, batch_tokens=80) + 2
    assert_within_rounding(run(True), run(False), terms, steps=8)


@pytest.mark.parametrize("unit", ["rank", "params"])
def test_k_of_budget_trains_at_most_that_share_of_the_adapters_cost(unit):
    from dynlora.core.count import rank_cost
    from tests.conftest import train_steps

    model, layers = adapted_bert(dropout=False)
    config = ModuleAllocConfig(schedule="every:2", k=0.5, k_of="budget")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    controller = Controller(model, ModuleAlloc(config, total_steps=4), optimizer=opt, seed=0, budget_unit=unit)
    train_steps(model, opt, controller, 2, labelled_batch)
    cost = {n: layer.rank * (rank_cost(layer, unit) if unit != "rank" else 1) for n, layer in layers.items()}
    trained = sum(cost[n] for n in controller.active)
    assert 0.5 * sum(cost.values()) - max(cost.values()) < trained <= 0.5 * sum(cost.values())
    assert controller.history[-1].detail["k"] == len(controller.active)


def test_gradient_scores_follow_a_changed_loss():
    """Periodic selection by gradient norms must not lock in the first set: a frozen adapter has no gradient,
    and a score that sums over steps kept the adapters that happened to train first ahead for good."""
    model, layers = adapted_bert(dropout=False)
    method = ModuleAlloc(ModuleAllocConfig(score="gradient", schedule="every:5", k=0.5, k_of="adapters"), 60)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    controller = Controller(model, method, optimizer=opt)
    model.train()
    for step in range(60):
        ids, labels = labelled_batch(step)
        if step < 30:  # the task: every adapter's gradient counts
            loss = nn.functional.cross_entropy(model(input_ids=ids).logits, labels)
        else:  # now only the first layer's output matters: the second layer's adapters get no gradient
            out = model(input_ids=ids, output_hidden_states=True)
            loss = out.hidden_states[1].pow(2).mean() + 0 * out.logits.sum()
        loss.backward()
        opt.step()
        controller.step()
        opt.zero_grad()
    selections = [tuple(row["active"]) for row in controller.history if row["event"] == "select"]
    assert len(selections) == 11 and len(set(selections)) > 1
    assert all(".layer.0." in name for name in selections[-1])  # the last one: the adapters the loss now needs
