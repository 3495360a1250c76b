"""Adaptive ranks: our reading of "dynamic LoRA" (Liao et al., 2025, arXiv 2501.14859; abstract only).

1. Layer importance during training: by default the sensitivity ``|theta * grad|`` of each adapter,
   EMA-smoothed (optionally times AdaLoRA's uncertainty term); alternatives: output norm, gate size.
2. Every ``interval`` steps after a warm-up, the fixed budget (sum of ranks) is re-divided in
   proportion to importance within [min_rank, max_rank] (``allocate.proportional_targets``); at most
   ``max_moves`` ranks move per event (``allocate.limit_moves``). A module above its target gives up
   its least important ranks; a module below grows fresh ranks (zero B). Both go through the
   controller's one resize path, so surviving ranks keep their optimizer moments.
3. Optionally an input-feature gate ``g(x) = sigmoid(w . x + b)`` per adapter (``LoraLayer``).

So that no event moves the output, a rank is never cut while it still contributes: at an event the
surplus ranks (least important first) start to fade (``LoraLayer.fade`` falls by 1/interval per
step, the other ranks can take over meanwhile), and at the next event the faded ranks (now exactly 0)
are removed and the receivers grow the same number of fresh ranks (zero B). The total rank is the
budget at every moment; each move takes one interval to complete.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from dynlora.allocate import check_rank_bounds, limit_moves, proportional_targets
from dynlora.controller import Resize
from dynlora.errors import DynloraError
from dynlora.importance import ActivationNorm, GateMagnitude, Sensitivity
from dynlora.layer import LoraLayer

if TYPE_CHECKING:
    from dynlora.controller import Controller

SCORES = ("sensitivity", "activation", "gate")


@dataclass(frozen=True)
class AdaptiveConfig:
    """Knobs of the adaptive method; fractions are of the run's optimizer steps or of the budget."""

    score: str = "sensitivity"
    beta: float = 0.85
    uncertainty: bool = False
    interval: int | None = None
    interval_ratio: float = 0.1
    warmup_ratio: float = 0.1
    min_rank: int = 1
    max_rank: int | None = None
    max_moves_ratio: float = 0.1
    input_gate: bool = True
    input_gate_bias: float = 4.0

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise DynloraError(f"unknown adaptive score {self.score!r}; valid: {', '.join(SCORES)}")
        if not 0 <= self.beta < 1:
            raise DynloraError(f"beta {self.beta!r} must be in [0, 1)")
        if self.interval is not None and self.interval <= 0:
            raise DynloraError(f"interval {self.interval!r} must be a positive number of steps")
        for name in ("interval_ratio", "max_moves_ratio"):
            if not 0 < getattr(self, name) <= 1:
                raise DynloraError(f"{name} {getattr(self, name)!r} must be in (0, 1]")
        if not 0 <= self.warmup_ratio < 1:
            raise DynloraError(f"warmup_ratio {self.warmup_ratio!r} must be in [0, 1)")
        if self.min_rank < 0 or (self.max_rank is not None and self.max_rank < max(1, self.min_rank)):
            raise DynloraError(f"rank bounds [{self.min_rank}, {self.max_rank}] are not valid")


def rank_magnitude(layer: LoraLayer) -> torch.Tensor:
    """(r,) |A_i| * |B_:,i| * |c_i|: a rank's size in the update, when no sensitivity is tracked."""
    size = layer.lora_A.detach().norm(dim=1) * layer.lora_B.detach().norm(dim=0)
    return size * layer.gate.detach().abs() if layer.gate is not None else size


class Adaptive:
    """Re-divide the rank budget by layer importance every ``interval`` steps."""

    name = "adaptive"

    def __init__(self, config: AdaptiveConfig, total_steps: int) -> None:
        self.config = config
        self.total_steps = total_steps
        self.interval = config.interval or max(1, int(config.interval_ratio * total_steps))
        self.warmup = int(config.warmup_ratio * total_steps)
        if self.warmup + self.interval >= total_steps:
            raise DynloraError(f"adaptive: warm-up {self.warmup} + interval {self.interval} steps leave no "
                               f"reallocation in a run of {total_steps} steps")
        if config.score == "sensitivity":
            self.tracker: Any = Sensitivity(config.beta, config.uncertainty)
        elif config.score == "activation":
            self.tracker = ActivationNorm(config.beta)
        else:
            self.tracker = GateMagnitude()
        self.budget = 0
        self.pending: dict[str, int] = {}  # ranks owed to modules, granted when the fading ranks are gone

    def attach(self, controller: "Controller") -> None:
        self.budget = sum(controller.ranks().values())
        check_rank_bounds("adaptive", self.budget, len(controller.layers), self.config.min_rank, self.config.max_rank)
        self.tracker.attach(controller.layers)
        for layer in controller.layers.values():
            layer.enable_fade()

    def fires(self, step: int) -> bool:
        return self.warmup < step < self.total_steps and (step - self.warmup) % self.interval == 0

    def _rank_order(self, name: str, layer: LoraLayer) -> torch.Tensor:
        if isinstance(self.tracker, Sensitivity):
            return self.tracker.rank_scores(name)
        return rank_magnitude(layer).float().cpu()

    @torch.no_grad()
    def _fade(self, layers: Mapping[str, LoraLayer]) -> None:
        """Ranks on their way out lose 1/interval of their weight per step, reaching 0 at the next event."""
        for layer in layers.values():
            fading = layer.fade < 1
            if bool(fading.any()):
                layer.fade[fading] = (layer.fade[fading] - 1.0 / self.interval).clamp_(min=0.0)
                layer.fade[layer.fade < 1e-6] = 0.0

    def on_step(self, controller: "Controller") -> None:
        self.tracker.step(controller.layers)
        self._fade(controller.layers)
        if not self.fires(controller.global_step):
            return
        removed, grown = self._finish(controller)
        detail: dict[str, Any] = {"removed": removed, "grown": grown, "moved": 0}
        if controller.global_step + self.interval < self.total_steps:  # a fade started now can finish
            detail.update(self._decide(controller))
        controller.record("realloc", **detail)

    def _finish(self, controller: "Controller") -> tuple[int, int]:
        """Drop the ranks whose fade reached 0 and grow the modules owed them: the output does not move."""
        plan = {}
        removed = 0
        for name, layer in controller.layers.items():
            dead = int((layer.fade <= 0).sum())
            grow = self.pending.get(name, 0)
            if dead or grow:
                keep = tuple(i for i in range(layer.rank) if float(layer.fade[i]) > 0)
                plan[name] = Resize(keep=keep, grow=grow)
                removed += dead
        grown = sum(self.pending.values())
        if removed != grown:
            raise RuntimeError(f"adaptive: {removed} faded ranks but {grown} owed: the budget would change")
        controller.resize(plan)
        if isinstance(self.tracker, Sensitivity):
            for name, resize in plan.items():
                self.tracker.remap(name, list(resize.keep), resize.grow)
        self.pending = {}
        return removed, grown

    def _decide(self, controller: "Controller") -> dict[str, Any]:
        """New targets by importance; the surplus ranks start fading, the receivers are owed them."""
        scores = self.tracker.scores()
        current = controller.ranks()
        cap = self.config.max_rank if self.config.max_rank is not None else self.budget
        targets = proportional_targets(scores, self.budget, self.config.min_rank, cap)
        targets = limit_moves(current, targets, max(1, int(self.config.max_moves_ratio * self.budget)),
                              priority=scores)
        fading = 0
        with torch.no_grad():
            for name, layer in controller.layers.items():
                change = targets[name] - current[name]
                if change > 0:
                    self.pending[name] = change
                elif change < 0:
                    order = self._rank_order(name, layer)
                    for i in torch.argsort(order)[: -change].tolist():  # least important first
                        layer.fade[i] = 1.0 - 1.0 / self.interval
                    fading += -change
        return {"moved": fading, "targets": targets, "importance": {n: round(s, 6) for n, s in scores.items()}}

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict(), "budget": self.budget, "pending": dict(self.pending)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.budget = int(state["budget"])
        self.pending = {k: int(v) for k, v in state.get("pending", {}).items()}
