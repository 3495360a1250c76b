"""The controller's loop: observe -> per-step hook -> decide (when scheduled) -> apply -> record, and its
typed history; plans resize, switch and fade through the one apply path."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from dynlora.control.controller import Controller
from dynlora.control.events import Event
from dynlora.core.inject import AdapterConfig, inject
from dynlora.decide.plan import Plan, Resize
from dynlora.decide.schedule import Schedule
from dynlora.methods.base import MethodBase, View
from tests.conftest import tiny_bert


@dataclass(frozen=True)
class Why:
    reason: str
    count: int | None = None


class Scripted(MethodBase):
    """Returns the plans it is given, one per scheduled step; logs the order of calls."""

    name = "scripted"

    def __init__(self, plans: list[Plan], every: int = 2, total: int = 10) -> None:
        self.plans = list(plans)
        self.schedule = Schedule("every", every).for_run(total)
        self.calls: list[tuple[str, int]] = []
        tracker = self

        class Probe:
            def attach(self, layers): tracker.calls.append(("attach", 0))

            def step(self, layers): tracker.calls.append(("observe", 0))

            def scores(self): return {}

            def state_dict(self): return {"probe": 1}

            def load_state_dict(self, state): tracker.calls.append(("load", state["probe"]))

            def detach(self): pass

        self.trackers = (Probe(),)

    def per_step(self, step: int, view: View) -> None:
        self.calls.append(("hook", step))

    def decide(self, step: int, view: View) -> Plan | None:
        self.calls.append(("decide", step))
        return self.plans.pop(0) if self.plans else None


def _model():
    model = tiny_bert()
    inject(model, AdapterConfig(rank=4, alpha=8, fade=True), generator=torch.Generator().manual_seed(0))
    return model


def test_loop_order_and_schedule():
    method = Scripted([Plan("a"), Plan("b")], every=2, total=6)
    controller = Controller(_model(), method)
    for _ in range(5):
        controller.step()
    assert method.calls[0] == ("attach", 0)
    assert method.calls[1:4] == [("observe", 0), ("hook", 1), ("observe", 0)]
    assert [c for c in method.calls if c[0] == "decide"] == [("decide", 2), ("decide", 4)]
    assert [e.event for e in controller.history] == ["init", "a", "b"]


def test_plan_resizes_switches_fades_and_records_a_typed_event():
    model = _model()
    names = list(Controller(_model()).layers)
    plan = Plan("move", resizes={names[0]: Resize(keep=(0, 1)), names[1]: Resize(keep=(0, 1, 2, 3), grow=2)},
                active=tuple(names[:3]), fade={names[1]: (5,)}, fade_steps=4, detail=Why("test"))
    method = Scripted([plan], every=1, total=5)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    controller = Controller(model, method, optimizer=opt)
    before = controller.generation
    controller.step()
    layers = controller.layers
    assert layers[names[0]].rank == 2 and layers[names[1]].rank == 6
    assert [n for n, layer in layers.items() if layer.lora_A.requires_grad] == names[:3]
    assert float(layers[names[1]].fade[5]) == pytest.approx(0.75) and float(layers[names[1]].fade[4]) == 1.0
    assert controller.generation > before and controller.active == tuple(names[:3])
    event = controller.history[-1]
    assert isinstance(event, Event) and event.detail == {"reason": "test"}  # None fields are left out
    row = event.row()
    assert row["event"] == "move" and row["active"] == names[:3]
    assert row["total_rank"] == sum(controller.ranks().values())
    assert Event.from_row(json.loads(json.dumps(row))) == event
    assert event["reason"] == "test" and "count" not in event  # reads like the row it writes


def test_state_dict_restores_ranks_active_set_and_tracker_state():
    names = list(Controller(_model()).layers)
    plan = Plan("move", resizes={names[0]: Resize(keep=(0,))}, active=(names[0],))
    first = Controller(_model(), Scripted([plan], every=1, total=5))
    first.step()
    state = json.loads(json.dumps({k: v for k, v in first.state_dict().items() if k != "generator"}))
    state["generator"] = first.generator.get_state()
    method = Scripted([])
    again = Controller(_model(), method)
    again.load_state_dict(state)
    assert again.ranks() == first.ranks() and again.active == (names[0],) and again.global_step == 1
    assert ("load", 1) in method.calls
    assert [e.row() for e in again.history] == [e.row() for e in first.history]


def test_note_adds_a_log_line_without_ranks():
    controller = Controller(_model())
    controller.note("log", loss=0.5)
    assert controller.history[-1].row() == {"step": 0, "event": "log", "loss": 0.5}
    assert controller.history[-1].ranks is None and controller.method_name is None


def test_a_detail_may_not_shadow_the_event_fields():
    @dataclass(frozen=True)
    class Bad:
        ranks: int

    with pytest.raises(ValueError, match="reserved"):
        Event.of(1, "x", None, {}, Bad(3))


def test_refactor_keeps_the_output_restarts_only_its_adam_state_and_resets_gates():
    model = tiny_bert()
    inject(model, AdapterConfig(rank=4, alpha=8, use_gate=True), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    controller = Controller(model, optimizer=opt)
    ids = torch.randint(1, 100, (4, 10), generator=torch.Generator().manual_seed(3))
    for _ in range(3):  # B away from zero, gates away from one, Adam state everywhere
        model(input_ids=ids).logits.square().sum().backward()
        opt.step()
        opt.zero_grad()
        controller.step()
    name, other = list(controller.layers)[:2]
    layer = controller.layers[name]
    with torch.no_grad():
        layer.gate.mul_(torch.tensor([1.0, 0.5, 0.25, 0.9]))
    before_other = {k: v.clone() for k, v in opt.state[controller.layers[other].lora_B].items()}
    model.eval()
    with torch.no_grad():
        y = model(input_ids=ids).logits
        controller.apply(Plan("refactor", refactor=(name,)))
        # a QR and SVD in float32 rewrite one adapter: its product is exact to a few roundings
        assert (model(input_ids=ids).logits - y).abs().max() < 1e-5
    assert torch.equal(layer.gate.detach(), torch.ones(4)) and layer.rank == 4
    for p in (layer.lora_A, layer.lora_B):
        assert torch.count_nonzero(opt.state[p]["exp_avg"]) == 0 and torch.count_nonzero(opt.state[p]["exp_avg_sq"]) == 0
        assert torch.equal(controller.fresh.births[id(p)].born, torch.full((4,), 3.0))  # each slot counts from now
    after_other = opt.state[controller.layers[other].lora_B]
    assert all(torch.equal(after_other[k], v) for k, v in before_other.items())  # other adapters untouched
    norms = layer.gated_b().norm(dim=0)
    assert torch.all(norms[:-1] >= norms[1:])


@pytest.mark.parametrize("capacity", [None, 8])
def test_a_ddp_wrapper_must_follow_replaced_parameters_not_rank_slots_rewritten_in_place(capacity):
    model = tiny_bert()
    layers = inject(model, AdapterConfig(rank=4, capacity=capacity))
    controller = Controller(model, None)
    name = next(iter(layers))
    before = controller.generation
    controller.resize({name: Resize(keep=(0, 1), grow=3)})
    assert layers[name].rank == 5
    assert (controller.generation > before) is (capacity is None)  # new Parameter objects, or the same ones
