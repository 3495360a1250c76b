"""Dynamic module allocation ("DynaLoRA"; Hamar, Fülöp, Krastev, Brouwers; code JesseBrouw/FoMo-LoRA).

Every adapter exists and keeps applying its delta; only a selected subset trains. A tracker
(``observe``) scores the adapters; on the schedule a strategy (``decide.select``) picks the set that
trains until the next selection, and the controller switches the others off (``core.switch``): no
gradient, no update, optimizer state kept for their return.

Before the first selection every adapter trains (the paper's warm-up), so that each has a ``dW`` to
be scored by: the activation score is the norm of the adapter's own output ``dW x`` (LoRA-drop), and a
never-trained adapter (B = 0) scores 0. A ``probe`` instead trains nothing for its first steps and scores
each adapter by the forecast of that norm (the loss gradient with respect to B; ``observe.activation``),
which needs a backward pass but no optimizer state; its first selection is taken on the forecast, and the
adapters it leaves out keep B = 0, so only the sampling strategies give them a turn later: that is why
the default is the warm-up (``probe 0``). ``k`` counts the share of the adapters' cost in the run's
budget unit (``k_of budget``), or their number (``k_of adapters``, the paper's). The earlier default (a
5 % probe) was chosen on a score of the whole layer's output, which measured the frozen base.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from dynlora.core.layer import LoraLayer
from dynlora.decide.plan import Plan
from dynlora.decide.schedule import AnyOf, Schedule, check_span
from dynlora.decide.select import STRATEGIES, resolve_k, select
from dynlora.errors import DynloraError
from dynlora.methods.base import MethodBase, MethodSpec, View
from dynlora.methods.config import check_knobs, knob
from dynlora.methods.registry import register
from dynlora.observe.activation import ActivationNorm
from dynlora.observe.gradient import GradientNorm

TRACKERS = {"activation": ActivationNorm, "gradient": GradientNorm}
K_OF = ("adapters", "budget")


@dataclass(frozen=True)
class ModuleAllocConfig:
    """Score, strategy, schedule and size of the trained set.

    ``schedule``: ``once:N`` / ``every:N`` with N in steps, or a fraction below 1 of the run's steps
    (default ``every:0.2``: re-select every fifth of the run). ``k``: count or fraction of adapters
    (default 0.5); ``threshold`` is used by ``topp`` instead. ``decay``: EMA factor for the scores
    (None: accumulate over the run). ``warmup``: extra steps with every adapter active.
    """

    score: str = knob("activation", "activation | gradient", choices=tuple(TRACKERS))
    strategy: str = knob("topk", " | ".join(STRATEGIES), choices=STRATEGIES)
    schedule: str = knob("every:0.2", "once:N or every:N; N in steps, or a fraction below 1 of the run")
    k: float = knob(0.5, "adapters that train: a count or a fraction")
    k_of: str = knob("budget", "what k counts: adapters, or budget (the share of what the adapters cost in the "
                                 "run's budget unit, ranks / params / flops, that trains)", choices=K_OF)
    threshold: float = knob(0.5, "cumulative share for topp", gt=0, le=1)
    decay: float | None = knob(None, "EMA factor for the scores (default: accumulate)", type=float, ge=0, lt=1)
    warmup: float = knob(0, "extra steps (or fraction of the run) with every adapter active", type=float)
    probe: float = knob(0, "steps (or a fraction of the run) at the start when no adapter trains and each is scored by "
                           "the forecast of its output norm (the loss gradient with respect to B), then the first "
                           "selection; 0: every adapter trains until the first selection (the paper's warm-up)",
                        type=float, ge=0)
    fold: bool = knob(False, "fold an adapter that does not train into its float32 base weight until it trains "
                             "again, so it costs nothing forward or backward; exact to float32 rounding only, so a "
                             "resumed run then matches a straight one to rounding, not bit for bit")

    def __post_init__(self) -> None:
        check_knobs(self)
        if not self.k > 0 or (self.k >= 1 and self.k != int(self.k)):
            raise DynloraError(f"k {self.k!r} must be a whole count >= 1 or a fraction in (0, 1)")
        self.when()
        if self.probe:
            check_span("probe", self.probe)
            if self.score != "activation":
                raise DynloraError(f"probe {self.probe:g} scores untrained adapters by the forecast of their output norm: "
                                   f"use score activation, not {self.score!r}, or probe 0 (every adapter trains "
                                   "until the first selection)")

    def when(self) -> Schedule:
        return Schedule.parse(self.schedule, warmup=self.warmup, label="--schedule")


def parse_variant(variant: str, base: ModuleAllocConfig) -> ModuleAllocConfig:
    """``topk`` / ``topk-gradient`` / ``uniform`` (the part after ``module-alloc:``) applied to ``base``."""
    strategy, _, score = variant.partition("-")
    return replace(base, strategy=strategy or base.strategy, score=score or base.score)


@dataclass(frozen=True)
class Selection:
    """What one selection saw (written into the history; the active set is the plan's)."""

    k: int
    scores: dict[str, float]


class ModuleAlloc(MethodBase):
    """Train only the selected adapters; re-select on the schedule."""

    name = "module-alloc"

    def __init__(self, config: ModuleAllocConfig, total_steps: int) -> None:
        self.config = config
        self.total_steps = total_steps
        regular = config.when().for_run(total_steps)
        if config.probe:  # the first selection right after the probe, then the regular schedule
            first = Schedule("once", config.probe, label="--probe").for_run(total_steps)
            self.schedule: Schedule | AnyOf = AnyOf((first, regular))
        else:
            self.schedule = regular
        self.tracker = TRACKERS[config.score](config.decay)
        self.trackers = (self.tracker,)
        self.counts: dict[str, int] = {}

    def attach(self, layers: Mapping[str, LoraLayer]) -> None:
        n = len(layers)
        if self.config.k >= 1 and self.config.k > n:
            raise DynloraError(f"k {self.config.k:g} is more than the {n} adapters; give a count up to {n} "
                               "or a fraction in (0, 1)")

    def start(self, view: View) -> Plan | None:
        """With a probe, nothing trains until the first selection; the tracker scores the forecast meanwhile."""
        if not self.config.probe:
            return None
        self.tracker.restart(forecast=True)
        return Plan("select", active=(), fold_inactive=self.config.fold, detail=Selection(k=0, scores={}))

    def decide(self, step: int, view: View) -> Plan:
        scores = self.tracker.scores()
        costs = None
        if self.config.k_of == "budget":  # what each adapter costs at its rank: in ranks, or the run's unit
            costs = {n: layer.rank * view.budget.costs[n] for n, layer in view.layers.items()}
        chosen = select(self.config.strategy, scores, k=self.config.k, threshold=self.config.threshold,
                        counts=self.counts, generator=view.generator, costs=costs)
        for name in chosen:
            self.counts[name] = self.counts.get(name, 0) + 1
        if getattr(self.tracker, "forecast", False):  # the probe is over: from now on the trained dW x counts
            self.tracker.restart(forecast=False)
        self.tracker.new_period()
        k = len(chosen) if self.config.strategy == "topp" or costs else resolve_k(self.config.k, len(scores))
        detail = Selection(k=k, scores={n: round(s, 6) for n, s in scores.items()})
        return Plan("select", active=chosen, fold_inactive=self.config.fold, detail=detail)

    def state_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.counts = {k: int(v) for k, v in state.get("counts", {}).items()}


SPEC = register(MethodSpec(
    name="module-alloc",
    help="train only the most important adapters",
    config=ModuleAllocConfig,
    build=ModuleAlloc,
    variant=parse_variant,
    variant_help="module-alloc:<strategy>[-<score>], e.g. module-alloc:topk",
    report_panels=("activity",),
))
