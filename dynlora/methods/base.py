"""What a method is: the protocol the controller drives, what it may read, and what it registers.

A method observes through its ``trackers`` (the controller steps them), may run a declared per-step
hook (``per_step``: work that is not a decision, such as a proximal step), and at the steps its
``schedule`` fires returns a ``Plan`` from ``decide``. It never resizes, switches or records itself:
the controller applies the plan, fixes the optimizer and writes the history.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from dynlora.core.count import Budget, run_budget
from dynlora.core.layer import LoraLayer
from dynlora.core.surgery import unwrap_optimizer
from dynlora.decide.plan import Plan
from dynlora.decide.schedule import AnyOf, Schedule
from dynlora.observe.scores import Tracker


def capped(limit: int | None, layers: Mapping[str, LoraLayer]) -> int | None:
    """``limit`` (a method's ``max_rank``; None: none), lowered to the slots the adapters hold when they have a
    fixed capacity: no plan may grow an adapter past them."""
    caps = [layer.capacity for layer in layers.values() if layer.capacity is not None]
    if not caps:
        return limit
    return min(caps) if limit is None else min(limit, *caps)


class View:
    """What a method may read at a step: the adapters, the decision generator, the learning rates."""

    def __init__(self, step: int, layers: Mapping[str, LoraLayer], generator: torch.Generator,
                 optimizer: object | None = None, lr_factors: Mapping[int, float] | None = None,
                 budget: Budget | None = None) -> None:
        self.step = step
        self.layers = layers
        # the run's budget for the ranks, in its unit (default: the ranks the adapters hold now)
        self.budget = budget if budget is not None else run_budget(layers, "rank")
        self.generator = generator  # seeded from the run seed: every process draws alike
        self._optimizer = optimizer
        self._factors = lr_factors or {}  # id(parameter) -> the rescale of its step (core.own_lr)
        self._lrs: dict[int, float] | None = None

    def ranks(self) -> dict[str, int]:
        return {name: layer.rank for name, layer in self.layers.items()}

    def max_rank(self, limit: int | None) -> int | None:
        """``limit``, lowered to the adapters' fixed capacity where they have one (``capped``)."""
        return capped(limit, self.layers)

    def subset(self, names: Sequence[str]) -> "View":
        """The same step over only the adapters ``names``, whose budget is what their ranks cost now."""
        layers = {n: self.layers[n] for n in names}
        return View(self.step, layers, self.generator, self._optimizer, self._factors,
                    budget=self.budget.subset({n: layer.rank for n, layer in layers.items()}))

    def learning_rates(self) -> dict[int, float]:
        """id(parameter) -> the learning rate its step used (its group's, rescaled where the method asked for
        its own; empty: no optimizer)."""
        if self._lrs is None:
            self._lrs = {}
            if self._optimizer is not None:
                for group in unwrap_optimizer(self._optimizer).param_groups:
                    for p in group["params"]:
                        self._lrs[id(p)] = float(group["lr"]) * self._factors.get(id(p), 1.0)
        return self._lrs


class Method(Protocol):
    """A dynamic method as the controller drives it (static LoRA has none)."""

    name: str
    schedule: Schedule | AnyOf | None  # in whole steps for this run: when ``decide`` is called (None: never)
    trackers: tuple[Tracker, ...]

    def attach(self, layers: Mapping[str, LoraLayer]) -> None:
        """Check the adapters once (a ``DynloraError`` for settings they cannot meet)."""

    def per_step(self, step: int, view: View) -> None:
        """Per-step work that is not a decision, after the trackers have stepped."""

    def start(self, view: View) -> Plan | None:
        """Before the first step: what to change at once (recorded as a step-0 event), or None."""

    def decide(self, step: int, view: View) -> Plan | Sequence[Plan] | None:
        """At a scheduled step: what to change, or None."""

    def own_lrs(self, layers: Mapping[str, LoraLayer]) -> dict[nn.Parameter, float]:
        """Parameters that train at their own base learning rate, whoever built the optimizer."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class MethodBase:
    """Defaults for the optional parts of ``Method``: no trackers, no schedule, no per-step hook."""

    name = ""
    schedule: Schedule | AnyOf | None = None
    trackers: tuple[Tracker, ...] = ()

    def attach(self, layers: Mapping[str, LoraLayer]) -> None:
        pass

    def per_step(self, step: int, view: View) -> None:
        pass

    def start(self, view: View) -> Plan | None:
        return None

    def decide(self, step: int, view: View) -> Plan | Sequence[Plan] | None:
        return None

    def own_lrs(self, layers: Mapping[str, LoraLayer]) -> dict[nn.Parameter, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


@dataclass(frozen=True)
class AdapterNeeds:
    """What a method's adapters must carry: per-rank gates, the input gate, a per-rank fade."""

    gate: bool = False
    input_gate: bool = False
    input_gate_bias: float = 4.0
    fade: bool = False


@dataclass(frozen=True)
class TrainData:
    """The run's training split as a method may read it while it prepares (a data-driven initialisation):
    tokenized examples, the run's collator, batch size and seed."""

    dataset: Any  # a sized torch dataset of tokenized examples
    collate: Callable[[list[Any]], dict[str, Any]]
    batch_size: int
    seed: int

    def batches(self, count: int, size: int | None = None) -> list[dict[str, Any]]:
        """``count`` collated batches of ``size`` distinct examples (default the run's batch size), labels
        included, in an order drawn from the run seed: every process and every resume reads the same ones.
        Fewer when the split runs out; never a short batch."""
        size = size or self.batch_size
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed)).tolist()
        return [self.collate([self.dataset[i] for i in order[start:start + size]])
                for start in range(0, min(count * size, len(order) - size + 1), size)]


@dataclass
class Prepared:
    """An adapted model ready for training, whichever way it was built."""

    model: nn.Module
    save_adapter: Callable[..., Any]  # (folder, gate_means=None) -> writes a PEFT adapter folder
    ranks: Callable[[], dict[str, int]]  # current rank of every adapted module
    flops: Callable[[], int]  # forward FLOPs per token of all adapter paths
    budget: int = 0  # what the method is held to, in the run's budget unit (compare requires it equal)
    controller: Any = None  # dynlora's Controller for native methods
    step_hooks: list[Callable[[int], None]] = field(default_factory=list)  # called after each optimizer step
    param_groups: list[dict[str, Any]] | None = None  # own optimizer groups, else one group of every trainable


@dataclass(frozen=True)
class MethodSpec:
    """Everything shared code needs to know about a method; ``methods.registry.register`` takes it.

    Native methods give ``build`` (config, total optimizer steps) -> ``Method`` or None (static
    adapters) and run on dynlora's adapters and controller; others (PEFT baselines) give ``prepare``,
    which with ``reads_data`` gets the training split too (an initialisation computed from the data).
    ``config`` is a frozen dataclass whose fields carry ``metadata`` made by ``methods.config.knob``
    (flag, help, bounds): the CLI's flags are generated from it.
    """

    name: str
    help: str
    config: type | None = None
    build: Callable[[Any, int], Method | None] | None = None
    prepare: Callable[..., Prepared] | None = None  # (model, AdapterSettings, total_steps, seed[, data=TrainData])
    reads_data: bool = False  # ``prepare`` also takes ``data=TrainData``: the run's training batches
    variant: Callable[[str, Any], Any] | None = None  # ("topk-gradient", config) -> config, for name:variant
    variant_help: str = ""
    needs: Callable[[Any], AdapterNeeds] = lambda config: AdapterNeeds()
    param_groups: Callable[[nn.Module, float, Any, float], list[dict[str, Any]]] | None = None  # (model, lr, config, wd)
    min_rank: Callable[[Any], int] = lambda config: 1  # fewest ranks per adapter when a budget is split
    report_panels: tuple[str, ...] = ()  # run-report pictures beyond the common ones
    static: bool = False  # ranks never move (compare draws no rank heatmap)
    baseline: bool = False  # compare's summary divides by this method's numbers
    default: bool = False  # what ``dynlora train`` runs without --method
    compare_default: bool = False  # in ``dynlora compare``'s default method list

    def __post_init__(self) -> None:
        if (self.build is None) == (self.prepare is None):
            raise ValueError(f"method {self.name!r}: give exactly one of build (native) or prepare")

    def make_config(self, variant: str = "", **values: Any) -> Any:
        """The method's config from ``values`` (defaults elsewhere), with ``variant`` applied."""
        config = self.config(**values) if self.config is not None else None
        if variant:
            config = self.variant(variant, config) if self.variant is not None else config
        return config
