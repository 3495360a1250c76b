"""Dynamic module allocation ("DynaLoRA"; Hamar, Fülöp, Krastev, Brouwers; code JesseBrouw/FoMo-LoRA).

Every adapter exists and keeps applying its delta; only a selected subset trains. A tracker
(``importance``) scores the adapters; on a schedule (``schedule``) a strategy (``select``) picks the
set that trains until the next selection. Inactive adapters get ``requires_grad = False``: autograd
computes and stores no gradient for them (and saves fewer activations), the optimizer skips them, and
their optimizer state waits untouched for their return. Before the first selection all adapters train.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dynlora.errors import DynloraError
from dynlora.importance import TRACKERS
from dynlora.layer import LoraLayer
from dynlora.schedule import Schedule
from dynlora.select import STRATEGIES, resolve_k, select

if TYPE_CHECKING:
    from dynlora.controller import Controller


@dataclass(frozen=True)
class ModuleAllocConfig:
    """Score, strategy, schedule and size of the trained set.

    ``schedule``: ``once:N`` / ``every:N`` with N in steps, or a fraction below 1 of the run's steps
    (default ``every:0.2``: re-select every fifth of the run). ``k``: count or fraction of adapters
    (default 0.5); ``threshold`` is used by ``topp`` instead. ``decay``: EMA factor for the scores
    (None: accumulate over the run). ``warmup``: extra steps with every adapter active.
    """

    score: str = "activation"
    strategy: str = "topk"
    schedule: str = "every:0.2"
    k: float = 0.5
    threshold: float = 0.5
    decay: float | None = None
    warmup: int = 0

    def __post_init__(self) -> None:
        if self.score not in TRACKERS:
            raise DynloraError(f"unknown score {self.score!r}; valid: {', '.join(TRACKERS)}")
        if self.strategy not in STRATEGIES:
            raise DynloraError(f"unknown strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}")
        if not self.k > 0 or (self.k >= 1 and self.k != int(self.k)):
            raise DynloraError(f"k {self.k!r} must be a whole count >= 1 or a fraction in (0, 1)")
        if not 0 < self.threshold <= 1:
            raise DynloraError(f"threshold {self.threshold!r} must be in (0, 1]")
        if self.decay is not None and not 0 <= self.decay < 1:
            raise DynloraError(f"decay {self.decay!r} must be in [0, 1)")
        self.schedule_for(10**9)  # checks the text

    def schedule_for(self, total_steps: int) -> Schedule:
        """The schedule in steps for a run of ``total_steps``."""
        kind, _, count = self.schedule.partition(":")
        try:
            value = float(count)
        except ValueError:
            raise DynloraError(f"schedule {self.schedule!r} is not valid; use once:N or every:N") from None
        if not value > 0 or (value >= 1 and value != int(value)):
            raise DynloraError(f"schedule {self.schedule!r}: N must be a whole number of steps or a fraction below 1")
        n = int(value) if value >= 1 else max(1, int(value * total_steps))
        return Schedule(kind=kind, n=n, warmup=self.warmup)


def parse_variant(variant: str, base: ModuleAllocConfig) -> ModuleAllocConfig:
    """``topk`` / ``topk-gradient`` / ``uniform`` (the part after ``module-alloc:``) applied to ``base``."""
    from dataclasses import replace

    strategy, _, score = variant.partition("-")
    return replace(base, strategy=strategy or base.strategy, score=score or base.score)


class ModuleAlloc:
    """Train only the selected adapters; re-select on a schedule."""

    name = "module-alloc"

    def __init__(self, config: ModuleAllocConfig, total_steps: int) -> None:
        self.config = config
        self.total_steps = total_steps
        self.schedule = config.schedule_for(total_steps)
        self.schedule.check(total_steps)
        self.tracker = TRACKERS[config.score](config.decay)
        self.counts: dict[str, int] = {}
        self.active: tuple[str, ...] | None = None  # None: every adapter trains

    def attach(self, controller: "Controller") -> None:
        n = len(controller.layers)
        if self.config.k >= 1 and self.config.k > n:
            raise DynloraError(f"k {self.config.k:g} is more than the {n} adapters; give a count up to {n} "
                               "or a fraction in (0, 1)")
        self.tracker.attach(controller.layers)

    def on_step(self, controller: "Controller") -> None:
        self.tracker.step(controller.layers)
        if not self.schedule.fires(controller.global_step, stop=self.total_steps):
            return
        scores = self.tracker.scores()
        chosen = select(self.config.strategy, scores, k=self.config.k, threshold=self.config.threshold,
                        counts=self.counts, generator=controller.generator)
        for name in chosen:
            self.counts[name] = self.counts.get(name, 0) + 1
        self.active = chosen
        apply_activity(controller.layers, chosen)
        k = len(chosen) if self.config.strategy == "topp" else resolve_k(self.config.k, len(scores))
        controller.record("select", active=list(chosen), k=k,
                          scores={n: round(s, 6) for n, s in scores.items()})

    def state_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "active": list(self.active) if self.active is not None else None,
                "tracker": self.tracker.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.counts = {k: int(v) for k, v in state.get("counts", {}).items()}
        self.tracker.load_state_dict(state["tracker"])
        self.active = tuple(state["active"]) if state.get("active") is not None else None

    def restore(self, controller: "Controller") -> None:
        """Re-apply the active set after a resume."""
        if self.active is not None:
            apply_activity(controller.layers, self.active)


def apply_activity(layers: Mapping[str, LoraLayer], active: tuple[str, ...]) -> None:
    """Adapters in ``active`` train; the others stop: no gradient, no update, optimizer state kept."""
    chosen = set(active)
    for name, layer in layers.items():
        on = name in chosen
        for p in (layer.lora_A, layer.lora_B, layer.gate):
            if p is not None:
                p.requires_grad_(on)
                if not on:
                    p.grad = None
