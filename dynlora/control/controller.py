"""The controller: the only object that knows the step, and the only path that changes the model.

Each optimizer step it runs the method's loop: **observe** (step the trackers) -> the method's
per-step hook -> at the steps the schedule names, **decide** (``method.decide`` returns a ``Plan``)
-> **apply** (rank resizes, then trackers follow them, then switching adapters on/off, then fades;
after it the optimizer surgery) -> **record** (a typed ``Event`` in the history). Plain PyTorch::

    loss.backward()
    optimizer.step()
    controller.step()        # after optimizer.step(), before zero_grad(): gradients are still there
    optimizer.zero_grad()

The HF Trainer does the same through ``hf.callback.DynloraCallback``. ``generation`` counts the
changes to the parameter set or to what trains: a DDP wrapper built before a change must be rebuilt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from dynlora.control.events import Event
from dynlora.core.count import Budget, run_budget
from dynlora.core.distributed import check_replicas, world_size
from dynlora.core.fresh_slots import FreshSlots
from dynlora.core.inject import adapters
from dynlora.core.layer import LoraLayer, RankChange
from dynlora.core.own_lr import OwnLearningRates
from dynlora.core.refactor import singular_factors
from dynlora.core.surgery import remap_optimizer_state
from dynlora.core.switch import SkipSwitchedOff, fold, keep_backward, set_trainable, unfold
from dynlora.decide.allocate import fit_to_budget
from dynlora.decide.plan import Plan, Resize
from dynlora.errors import DynloraError
from dynlora.methods.base import Method, View


class Controller:
    """Drives one model's adapters through training; holds the step count, the active set and the history.

    ``budget_ranks``: the ranks whose plain-LoRA cost is the budget (default: the adapters' ranks now). A
    controller built after the ranks moved (a resume: the layers took the checkpoint's ranks) needs the run's
    starting ranks here, or it would recount the budget from the moved ranks and trim trained ranks to it.
    """

    def __init__(self, model: nn.Module, method: Method | None = None, optimizer: object | None = None,
                 seed: int = 0, budget_unit: str = "rank", budget_ranks: Mapping[str, int] | None = None) -> None:
        self.model = model
        self.layers: dict[str, LoraLayer] = adapters(model)
        if not self.layers:
            raise ValueError("the model has no dynlora adapters; call dynlora.inject first")
        self.method = method
        self._optimizer: object | None = None
        self._own_lr: OwnLearningRates | None = None
        self.fresh = FreshSlots()  # grown ranks' own Adam bias correction
        self.skip = SkipSwitchedOff(self.layers)  # switched-off adapters in rank slots skip the optimizer's step
        self.global_step = 0
        self.generation = 0
        self.active: tuple[str, ...] | None = None  # None: every adapter trains
        self.fold_inactive = False  # whether adapters that do not train are folded into their base weights
        self.folded: set[str] = set()
        self.generator = torch.Generator().manual_seed(seed)
        self.history: list[Event] = []
        self.budget_unit = budget_unit
        if budget_ranks is not None and set(budget_ranks) != set(self.layers):
            raise ValueError("budget_ranks name other adapters than the model's: "
                             f"{sorted(set(budget_ranks) ^ set(self.layers))[:3]}")
        # an adapter at rank 0 pays no input gate (it is frozen and not exported) and, in FLOPs, does no add
        self.budget: Budget = run_budget(self.layers, budget_unit, budget_ranks)
        if method is not None:
            method.attach(self.layers)
            for tracker in method.trackers:
                tracker.attach(self.layers)
        self.optimizer = optimizer
        # gates and input gates cost too: the ranks start within what plain LoRA of the budget's ranks costs
        ranks = self.ranks()
        try:  # at an average rank of 1 a module may have to start at rank 0 to pay for the others' gates
            fitted = fit_to_budget(ranks, self.budget.costs, self.budget.total, min_rank=0, fixed=self.budget.fixed)
        except ValueError as err:
            raise DynloraError(f"budget_unit {budget_unit!r}: {err}") from None
        trim = {n: Resize(keep=tuple(range(r))) for n, r in fitted.items() if r != ranks[n]}
        if trim:
            self.apply(Plan("budget", resizes=trim))
        self.record("init")
        # a plan may switch every adapter off (a probe): on a model with no trainable head, backward must still run
        self._backward = keep_backward(model) if method is not None else None
        first = method.start(self.view()) if method is not None else None
        if first is not None:
            self.apply(first)
            self.record(first.event, first.detail, active=first.active)

    @property
    def optimizer(self) -> object | None:
        """The optimizer the controller fixes after resizes; a method's own learning rates follow it."""
        return self._optimizer

    @optimizer.setter
    def optimizer(self, optimizer: object | None) -> None:
        if optimizer is self._optimizer:
            return
        self._optimizer = optimizer
        self.skip.install(optimizer)
        self.fresh.install(optimizer)  # before the own-lr rescale: that one scales the corrected step
        self._follow_own_lrs()

    def _follow_own_lrs(self) -> None:
        """(Re)install the step rescale for the method's own-lr parameters (new objects after a resize)."""
        if self._own_lr is not None:
            self._own_lr.close()
            self._own_lr = None
        wants = self.method.own_lrs(self.layers) if self.method is not None else {}
        if self._optimizer is not None and wants:
            self._own_lr = OwnLearningRates(self._optimizer, wants)

    @property
    def method_name(self) -> str | None:
        return self.method.name if self.method is not None else None

    def ranks(self) -> dict[str, int]:
        return {name: layer.rank for name, layer in self.layers.items()}

    def view(self) -> View:
        factors = self._own_lr.factors() if self._own_lr is not None else None
        return View(self.global_step, self.layers, self.generator, self.optimizer, factors, budget=self.budget)

    def step(self) -> None:
        """Advance one optimizer step: observe, the per-step hook, and decide -> apply -> record when due."""
        self.global_step += 1
        method = self.method
        if method is None:
            return
        for tracker in method.trackers:
            tracker.step(self.layers)
        view = self.view()
        method.per_step(self.global_step, view)
        if method.schedule is None or not method.schedule.fires(self.global_step):
            return
        decided = method.decide(self.global_step, view)
        plans = [decided] if isinstance(decided, Plan) else list(decided or ())  # a composed method: several
        for plan in plans:
            self.apply(plan)
            self.record(plan.event, plan.detail, active=plan.active)
            if world_size() > 1:  # every process must have decided and applied the same
                trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
                check_replicas({**trainable, **{f"rank:{n}": r for n, r in self.ranks().items()}}, self.global_step)
                self.history[-1] = replace(self.history[-1], replicas_agree=world_size())

    def apply(self, plan: Plan) -> list[RankChange]:
        """Carry out a plan: resize, let the trackers follow, re-factorise, switch, start fades."""
        changes = self.resize(plan.resizes)
        for tracker in self.method.trackers if self.method is not None else ():
            follow = getattr(tracker, "follow", None)
            if follow is not None:
                for name, resize in plan.resizes.items():
                    follow(name, list(resize.keep), resize.grow)
        changes += self.refactor(plan.refactor)
        if plan.active is not None:
            self.switch(plan.active, plan.fold_inactive)
        with torch.no_grad():
            for name, ranks in plan.fade.items():
                fade = self.layers[name].fade
                if fade is None:
                    raise RuntimeError(f"adapter {name} has no fade; inject with AdapterConfig(fade=True)")
                for i in ranks:
                    fade[i] = 1.0 - 1.0 / plan.fade_steps
        return changes

    def resize(self, plan: Mapping[str, Resize]) -> list[RankChange]:
        """The one apply path for rank changes: resize layers, then fix the optimizer state."""
        return self._resize(plan)

    def _resize(self, plan: Mapping[str, Resize]) -> list[RankChange]:
        changes: list[RankChange] = []
        for name, resize in plan.items():
            folded = name in self.folded
            if folded:  # a folded adapter's ranks change outside its base weight
                unfold(self.layers, [name])
            changes += self.layers[name].resize(keep=list(resize.keep), grow=resize.grow, generator=self.generator)
            if folded and not fold(self.layers, [name]):
                self.folded.discard(name)
        remap_optimizer_state(self.optimizer, changes)
        self.fresh.follow(self.optimizer, changes)
        if changes:
            if any(change.old is not change.param for change in changes):  # not rank slots rewritten in place
                self.generation += 1
            self._follow_own_lrs()
        return changes

    def refactor(self, names: Sequence[str]) -> list[RankChange]:
        """Rewrite adapters as their singular directions, strongest first (``core.refactor``), through the one
        resize path: the ranks are replaced by as many new ones (zero moments; each slot's Adam count starts
        now, ``FreshSlots``) that then take the re-factorised values, so the output stays (to rounding).

        Trackers keep each slot's history: a rank's score is then its slot's, until the steps after refill it.
        An adapter whose product has fewer directions than ranks, or at rank 0, is left as it is.
        """
        changes: list[RankChange] = []
        for name in names:
            layer = self.layers[name]
            if name in self.folded:
                raise RuntimeError(f"adapter {name} is folded into its base weight: switch it on to re-factorise")
            factors = singular_factors(layer.live_slots(layer.lora_A), layer.live_slots(layer.gated_b(), 1))
            if factors is None:
                continue
            changes += self._resize({name: Resize(keep=(), grow=layer.rank)})  # gates and fades back to 1
            with torch.no_grad():
                layer.set_live("lora_A", factors[0])
                layer.set_live("lora_B", factors[1])
        return changes

    def switch(self, active: tuple[str, ...], fold_inactive: bool = False) -> None:
        """The one apply path for switching: adapters in ``active`` train, the others keep their state.

        ``fold_inactive``: the others are folded into their base weights (``core.switch.fold``, where that is
        exact to float32 rounding), so they cost no adapter work at all until they train again.
        """
        unknown = set(active) - set(self.layers)
        if unknown:
            raise ValueError(f"no such adapters: {sorted(unknown)[:3]}")
        off = set(self.layers) - set(active) if fold_inactive else set()
        unfold(self.layers, sorted(self.folded - off))
        set_trainable(self.layers, active)
        self.folded = (self.folded & off) | fold(self.layers, sorted(off - self.folded))
        self.active = tuple(active)
        self.fold_inactive = fold_inactive
        if any(layer.capacity is None for layer in self.layers.values()):  # rank slots keep requires_grad
            self.generation += 1

    def finish(self) -> None:
        """At the end of training: unfold every folded adapter (the base weights are the pretrained ones
        again, and the adapters export as they are), and record the end."""
        unfold(self.layers, sorted(self.folded))
        self.folded = set()
        if self._backward is not None:
            self._backward.remove()
            self._backward = None
        self.record("end")

    def record(self, event: str, detail: Any = None, active: tuple[str, ...] | None = None) -> Event:
        """Append an event (with every module's rank) to the history and return it."""
        row = Event.of(self.global_step, event, self.method_name, self.ranks(), detail, active)
        self.history.append(row)
        return row

    def note(self, event: str, **values: Any) -> None:
        """Append a light event (no ranks), e.g. the Trainer's loss logs, to the history."""
        self.history.append(Event(step=self.global_step, event=event, detail=values))

    def restore_ranks(self, ranks: Mapping[str, int]) -> None:
        """Give each layer the rank it had in a checkpoint, before weights and optimizer are loaded.

        Goes through ``resize`` so that an optimizer already built on the old parameters follows.
        """
        unknown = set(ranks) - set(self.layers)
        if unknown:
            raise ValueError(f"checkpoint names adapters this model lacks: {sorted(unknown)[:3]}")
        plan = {name: Resize(keep=tuple(range(min(self.layers[name].rank, rank))),
                             grow=max(0, rank - self.layers[name].rank))
                for name, rank in ranks.items() if self.layers[name].rank != rank}
        self.resize(plan)

    def state_dict(self) -> dict[str, Any]:
        method = self.method
        return {"global_step": self.global_step, "ranks": self.ranks(), "budget": self.budget.total,
                "history": [e.row() for e in self.history],
                "active": list(self.active) if self.active is not None else None,
                "fold_inactive": self.fold_inactive,
                "generator": self.generator.get_state(),
                "method": method.state_dict() if method is not None else {},
                "trackers": [t.state_dict() for t in method.trackers] if method is not None else [],
                "fresh_slots": self.fresh.state_dict(self._rank_params()[0])}

    def _rank_params(self) -> tuple[dict[str, nn.Parameter], dict[str, int]]:
        """Every adapter tensor with a rank dimension, by name, and that dimension."""
        params: dict[str, nn.Parameter] = {}
        dims: dict[str, int] = {}
        for name, layer in self.layers.items():
            for attr, dim in (("lora_A", 0), ("lora_B", 1), ("gate", 0)):
                p = getattr(layer, attr)
                if p is not None:
                    params[f"{name}.{attr}"], dims[f"{name}.{attr}"] = p, dim
        return params, dims

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.restore_ranks(state["ranks"])
        self.fresh.load_state_dict(state.get("fresh_slots", {}), *self._rank_params())
        self.budget = replace(self.budget, total=int(state.get("budget", self.budget.total)))
        self.global_step = int(state["global_step"])
        self.history = [Event.from_row(row) for row in state["history"]]
        self.generator.set_state(state["generator"])
        if self.method is not None:
            self.method.load_state_dict(state["method"])
            for tracker, saved in zip(self.method.trackers, state.get("trackers", [])):
                tracker.load_state_dict(saved)
        if state.get("active") is not None:
            self.switch(tuple(state["active"]), bool(state.get("fold_inactive", False)))
