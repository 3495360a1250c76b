"""The controller: the only object that knows the step. It observes, decides, applies and records.

Plain PyTorch loop::

    loss.backward()
    optimizer.step()
    controller.step()        # after optimizer.step(), before zero_grad(): gradients are still there
    optimizer.zero_grad()

The HF Trainer does the same through ``DynloraCallback`` (``callback.py``). Every shape change goes
through ``Controller.resize``: layer resize, then optimizer surgery, then a history record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from dynlora.distributed import check_replicas, world_size
from dynlora.inject import adapters
from dynlora.layer import LoraLayer, RankChange
from dynlora.surgery import remap_optimizer_state


@dataclass(frozen=True)
class Resize:
    """What to do to one adapter's ranks: keep these indices (in order), then add ``grow`` new ones."""

    keep: tuple[int, ...]
    grow: int = 0


class Method(Protocol):
    """A dynamic method plugged into the controller (static LoRA has none)."""

    name: str

    def on_step(self, controller: "Controller") -> None:
        """Called once per optimizer step; may call ``controller.resize`` and ``controller.record``.

        Optional hooks: ``attach(controller)`` when the controller is built, ``restore(controller)``
        after its state is loaded.
        """

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class Controller:
    """Drives one model's adapters through training; holds the step count and the history."""

    def __init__(self, model: nn.Module, method: Method | None = None, optimizer: object | None = None,
                 seed: int = 0) -> None:
        self.model = model
        self.layers: dict[str, LoraLayer] = adapters(model)
        if not self.layers:
            raise ValueError("the model has no dynlora adapters; call dynlora.inject first")
        self.method = method
        self.optimizer = optimizer
        self.global_step = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.history: list[dict[str, Any]] = []
        if hasattr(method, "attach"):
            method.attach(self)  # e.g. importance trackers hook the adapters
        self.record("init")

    @property
    def method_name(self) -> str:
        return self.method.name if self.method is not None else "lora"

    def ranks(self) -> dict[str, int]:
        return {name: layer.rank for name, layer in self.layers.items()}

    def step(self) -> None:
        """Advance one optimizer step and let the method act."""
        self.global_step += 1
        if self.method is not None:
            before = len(self.history)
            self.method.on_step(self)
            events = [row for row in self.history[before:] if "ranks" in row]
            if events and world_size() > 1:  # every process must have decided and applied the same
                trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
                check_replicas({**trainable, **{f"rank:{n}": r for n, r in self.ranks().items()}}, self.global_step)
                events[-1]["replicas_agree"] = world_size()

    def resize(self, plan: Mapping[str, Resize]) -> list[RankChange]:
        """The one apply path for rank changes: resize layers, then fix the optimizer state."""
        changes: list[RankChange] = []
        for name, resize in plan.items():
            changes += self.layers[name].resize(keep=list(resize.keep), grow=resize.grow, generator=self.generator)
        remap_optimizer_state(self.optimizer, changes)
        return changes

    def record(self, event: str, **detail: Any) -> dict[str, Any]:
        """Append an event (with every module's rank) to the history and return it."""
        row = {"step": self.global_step, "event": event, "method": self.method_name,
               "total_rank": sum(self.ranks().values()), "ranks": self.ranks(), **detail}
        self.history.append(row)
        return row

    def note(self, event: str, **detail: Any) -> None:
        """Append a light event (no ranks), e.g. the Trainer's loss logs, to the history."""
        self.history.append({"step": self.global_step, "event": event, **detail})

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
        return {"global_step": self.global_step, "ranks": self.ranks(), "history": list(self.history),
                "generator": self.generator.get_state(),
                "method": self.method.state_dict() if self.method is not None else {}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.restore_ranks(state["ranks"])
        self.global_step = int(state["global_step"])
        self.history = list(state["history"])
        self.generator.set_state(state["generator"])
        if self.method is not None:
            self.method.load_state_dict(state["method"])
            if hasattr(self.method, "restore"):
                self.method.restore(self)  # e.g. which adapters are switched off
