"""L1RA through the controller on a tiny BERT: proximal step, events, budget, moments, resume, export."""

import pytest
import torch
from peft import PeftModel
from torch import nn
from transformers import AutoModelForSequenceClassification

from dynlora.control.controller import Controller
from dynlora.core.inject import AdapterConfig, inject
from dynlora.core.layer import LoraLayer
from dynlora.errors import DynloraError
from dynlora.io.checkpoint import load_checkpoint, save_checkpoint
from dynlora.io.export import export_peft
from dynlora.methods.base import View
from dynlora.methods.l1ra import L1RA, L1RAConfig, gate_param_groups
from tests.conftest import tiny_bert, train_steps
from tests.tolerance import assert_within_rounding, chain_terms

STEPS = 24
CFG = L1RAConfig(lam=1.5, lr_c=0.05, interval=6)  # strong enough to prune within a tiny run
# tiny BERT (2 layers, hidden 32, feed-forward 64) on batches of 10 tokens
TERMS = chain_terms(layers=2, hidden=32, intermediate=64, seq=10)


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(1, 100, (8, 10), generator=g), torch.randint(0, 2, (8,), generator=g)


def _setup(cfg: L1RAConfig = CFG, seed: int = 0):
    model = tiny_bert()
    inject(model, AdapterConfig(rank=4, alpha=8, use_gate=True), generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(gate_param_groups(model, 1e-2, cfg))
    controller = Controller(model, L1RA(cfg, total_steps=STEPS), optimizer=opt, seed=seed)
    return model, opt, controller


def _train(model, opt, controller, until):
    return train_steps(model, opt, controller, until, _batch)


def test_proximal_step_shrinks_by_exactly_lr_times_lambda_and_zeroes_crossers():
    layer = LoraLayer(nn.Linear(4, 3), rank=4, alpha=4.0, use_gate=True)
    with torch.no_grad():
        layer.gate.copy_(torch.tensor([1.0, 0.5, 0.003, 0.0]))
    L1RA(L1RAConfig(lam=0.5, lr_c=0.01), total_steps=10).per_step(1, View(1, {"x": layer}, torch.Generator()))
    # one subtraction in float32 against the literals' own rounding to float32: 2 roundings
    assert_within_rounding(layer.gate.detach(), torch.tensor([0.995, 0.495, 0.0, 0.0]), terms=2)


@pytest.mark.parametrize("steps", [10, 40])
def test_pull_is_spread_over_the_run_whatever_its_length(steps):
    """At a constant lr_c a gate without gradient loses exactly ``pull`` over the run, in any run length."""
    layer = LoraLayer(nn.Linear(4, 3), rank=2, alpha=4.0, use_gate=True)
    method = L1RA(L1RAConfig(pull=0.6, lr_c=0.01), total_steps=steps)
    for step in range(1, steps + 1):
        method.per_step(step, View(step, {"x": layer}, torch.Generator()))
    # `steps` subtractions, each rounded to float32 at the gate's size
    assert_within_rounding(layer.gate.detach(), torch.full((2,), 0.4), terms=1, steps=steps + 1)
    assert L1RAConfig(lam=0.3, pull=5.0).strength(steps) == 0.3  # an explicit lambda wins


def test_proximal_step_uses_the_optimizers_gate_lr():
    model, opt, controller = _setup(L1RAConfig(lam=1.0, lr_c=0.05, interval=20))
    for group in opt.param_groups:
        group["lr"] = 0.0  # the optimizer moves nothing; only the proximal step acts
    layer = next(iter(controller.layers.values()))
    opt.param_groups[1]["lr"] = 0.02
    before = layer.gate.detach().clone()
    layer(torch.randn(2, layer.in_features)).sum().backward()
    opt.step()
    controller.step()
    assert torch.equal(layer.gate.detach(), (before - 0.02).clamp(0, 1))  # the same subtraction


def test_budget_conserved_and_ranks_really_move():
    model, opt, controller = _setup()
    budget = sum(controller.ranks().values())
    _train(model, opt, controller, STEPS)
    events = [row for row in controller.history if row["event"] == "realloc"]
    assert [row["step"] for row in events] == [6, 12, 18]  # not at the last step
    assert all(row["total_rank"] == budget for row in events)
    assert sum(row["moved"] for row in events) > 0
    assert len(set(controller.ranks().values())) > 1
    params = sum(layer.num_parameters() for layer in controller.layers.values())
    assert params == sum(layer.rank * (layer.in_features + layer.out_features + 1)
                         for layer in controller.layers.values())


def test_event_keeps_output_and_surviving_moments():
    model, opt, controller = _setup(L1RAConfig(lam=0.0, lr_c=0.05, interval=6))
    _train(model, opt, controller, 5)
    layers = list(controller.layers.values())
    with torch.no_grad():  # two dead ranks to free, as the proximal step would leave them
        layers[0].gate[[0, 2]] = 0.0
    olds = {"A0": layers[0].lora_A, "B": {id(layer): layer.lora_B for layer in layers}}
    before_a = {k: v.clone() for k, v in opt.state[olds["A0"]].items()}
    before_b = {i: opt.state[p]["exp_avg_sq"].clone() for i, p in olds["B"].items()}
    ids, _ = _batch(99)
    model.eval()
    with torch.no_grad():
        y = model(input_ids=ids).logits
    controller.step()  # step 6: the event
    with torch.no_grad():  # freed ranks added exact zeros, new ones add exact zeros: the rank sums' order may change
        assert_within_rounding(model(input_ids=ids).logits, y, TERMS)
    assert layers[0].rank == 2 and sum(controller.ranks().values()) == 4 * len(layers)
    assert torch.equal(opt.state[layers[0].lora_A]["exp_avg"], before_a["exp_avg"][[1, 3]])
    assert torch.equal(opt.state[layers[0].lora_A]["step"], before_a["step"])
    grown = controller.history[-1]["grown"]
    assert sum(grown.values()) == 2
    for name, n in grown.items():
        receiver = controller.layers[name]
        state = opt.state[receiver.lora_B]["exp_avg_sq"]
        assert torch.equal(state[:, :4], before_b[id(receiver)])  # survivors bit for bit
        assert torch.count_nonzero(state[:, 4:]) == 0 and state.shape[1] == 4 + n  # new ranks: zero moments


def test_same_seed_same_decisions():
    runs = []
    for _ in range(2):
        model, opt, controller = _setup()
        losses = _train(model, opt, controller, STEPS)
        runs.append((losses, [r.get("ranks") for r in controller.history]))
    assert runs[0] == runs[1]


def test_resume_equals_straight_through(tmp_path):
    straight = _train(*_setup(), STEPS)
    model, opt, controller = _setup()
    first = _train(model, opt, controller, 14)  # after two events
    save_checkpoint(tmp_path / "ckpt", model, controller, opt)
    model, opt, controller = _setup()  # fresh process: ranks back at 4 everywhere
    load_checkpoint(tmp_path / "ckpt", model, controller, opt)
    assert controller.global_step == 14
    rest = _train(model, opt, controller, STEPS)
    assert first + rest == straight


def test_peft_parity_after_reallocation(tmp_path):
    model, opt, controller = _setup()
    _train(model, opt, controller, STEPS)
    base = tiny_bert()
    base.save_pretrained(tmp_path / "base")
    export_peft(model, tmp_path / "adapter")
    plain = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tmp_path / "base"),
                                      str(tmp_path / "adapter")).eval()
    ids, _ = _batch(7)
    model.eval()
    with torch.no_grad():  # PEFT's forward against dynlora's (gates folded into B: one rounding more)
        assert_within_rounding(plain(input_ids=ids).logits, model(input_ids=ids).logits, TERMS + 2)


def test_config_errors():
    for kwargs in ({"lam": -1}, {"lr_c": 0}, {"threshold": 1.5}, {"interval": 0}, {"interval": 2.5},
                   {"interval": -0.1}, {"min_rank": -1}, {"max_rank": 0}):
        with pytest.raises(DynloraError):
            L1RAConfig(**kwargs)
    with pytest.raises(DynloraError, match="a run of 20 steps ends first"):
        L1RA(L1RAConfig(interval=50), total_steps=20)


def test_trainer_checkpoint_after_reallocation_resumes_like_straight_through(tmp_path):
    from transformers import Trainer, TrainingArguments

    from dynlora.hf.callback import DynloraCallback

    data = [{"input_ids": _batch(i)[0][0], "labels": int(_batch(i)[1][0])} for i in range(64)]

    def run(out, steps_to_save=None, resume=None):
        model = tiny_bert()
        inject(model, AdapterConfig(rank=4, alpha=8, use_gate=True), generator=torch.Generator().manual_seed(0))
        opt = torch.optim.AdamW(gate_param_groups(model, 1e-2, CFG))
        controller = Controller(model, L1RA(CFG, total_steps=STEPS), optimizer=opt, seed=0)  # restore follows it
        callback = DynloraCallback(controller)
        args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=4, max_steps=STEPS, lr_scheduler_type="constant",
                                 learning_rate=1e-2, report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
                                 logging_steps=1, save_strategy="steps" if steps_to_save else "no",
                                 save_steps=steps_to_save or 500)
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback], optimizers=(opt, None))
        if resume:
            callback.restore(resume)
        trainer.train(resume_from_checkpoint=resume)
        losses = {row["step"]: row["loss"] for row in trainer.state.log_history if "loss" in row}
        return losses, controller

    straight, c1 = run(tmp_path / "a")
    _, c2 = run(tmp_path / "b", steps_to_save=14)
    resumed, c3 = run(tmp_path / "c", resume=str(tmp_path / "b" / "checkpoint-14"))
    assert any(row["event"] == "realloc" and row["moved"] for row in c1.history)
    assert c3.ranks() == c1.ranks()
    assert [resumed[s] for s in range(15, STEPS + 1)] == [straight[s] for s in range(15, STEPS + 1)]


def test_need_sends_freed_ranks_by_sensitivity_and_resumes_exactly(tmp_path, monkeypatch):
    """``reassign="need"``: each event hands the allocator the tracker's module scores; the tracker is saved."""
    import dynlora.methods.l1ra as l1ra

    cfg = L1RAConfig(lam=1.5, lr_c=0.05, interval=6, reassign="need")
    seen = []
    real = l1ra.prune_and_redistribute

    def spy(gates, *args, **kwargs):
        plan = real(gates, *args, **kwargs)
        seen.append((dict(kwargs["need"]), plan))
        return plan

    monkeypatch.setattr(l1ra, "prune_and_redistribute", spy)
    model, opt, controller = _setup(cfg)
    straight = _train(model, opt, controller, STEPS)
    assert len(seen) == 3 and sum(plan.moved for _, plan in seen) > 0
    for need, _ in seen:  # the allocator is given every module's score (its rule is tested in tests/decide)
        assert set(need) == set(controller.layers) and all(v > 0 for v in need.values())
    assert any(row["event"] == "realloc" and row["moved"] for row in controller.history)
    model, opt, controller = _setup(cfg)
    first = _train(model, opt, controller, 14)
    save_checkpoint(tmp_path / "ckpt", model, controller, opt)
    model, opt, controller = _setup(cfg)
    load_checkpoint(tmp_path / "ckpt", model, controller, opt)
    assert first + _train(model, opt, controller, STEPS) == straight
    need_ranks = controller.ranks()
    monkeypatch.undo()
    spread_model, spread_opt, spread = _setup()
    _train(spread_model, spread_opt, spread, STEPS)
    assert need_ranks != spread.ranks()  # the rule decides where ranks go
