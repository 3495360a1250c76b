"""Adaptive ranks: our reading of "dynamic LoRA" (Liao et al., 2025, arXiv 2501.14859; abstract only).

1. Layer importance during training: by default the sensitivity ``|theta * grad|`` of each adapter,
   EMA-smoothed (optionally times AdaLoRA's uncertainty term); alternatives: output norm, gate size.
2. Every ``interval`` steps after a warm-up, the fixed budget (sum of ranks) is re-divided in
   proportion to importance within [min_rank, max_rank] (``allocate.proportional_targets``); at most
   ``max_moves`` ranks move per event (``allocate.limit_moves``). A module above its target drops its
   least important ranks; a module below grows fresh ranks (zero B: the output does not move). Both go
   through the controller's one resize path, so surviving ranks keep their optimizer moments.
3. Optionally an input-feature gate ``g(x) = sigmoid(w . x + b)`` per adapter (``LoraLayer``).

Dropping a live rank does change the output a little; each event records the share of the adapters'
update that the dropped ranks carried (``dropped_delta``), which stays small because the least
important ranks go first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from dynlora.allocate import limit_moves, proportional_targets
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

    def attach(self, controller: "Controller") -> None:
        self.tracker.attach(controller.layers)
        self.budget = sum(controller.ranks().values())

    def fires(self, step: int) -> bool:
        return self.warmup < step < self.total_steps and (step - self.warmup) % self.interval == 0

    def _rank_order(self, name: str, layer: LoraLayer) -> torch.Tensor:
        if isinstance(self.tracker, Sensitivity):
            return self.tracker.rank_scores(name)
        return rank_magnitude(layer).float().cpu()

    def on_step(self, controller: "Controller") -> None:
        self.tracker.step(controller.layers)
        if not self.fires(controller.global_step):
            return
        scores = self.tracker.scores()
        current = controller.ranks()
        cap = self.config.max_rank if self.config.max_rank is not None else self.budget
        targets = proportional_targets(scores, self.budget, self.config.min_rank, cap)
        max_moves = max(1, int(self.config.max_moves_ratio * self.budget))
        targets = limit_moves(current, targets, max_moves, priority=scores)
        plan, dropped, total = {}, 0.0, 0.0
        for name, layer in controller.layers.items():
            change = targets[name] - current[name]
            total += float(layer.delta_weight().norm()) if layer.rank else 0.0
            if change == 0:
                continue
            order = self._rank_order(name, layer)
            if change < 0:
                keep = sorted(torch.argsort(order, descending=True)[: targets[name]].tolist())
                gone = sorted(set(range(layer.rank)) - set(keep))
                dropped += float(_partial_delta(layer, gone).norm())
                plan[name] = Resize(keep=tuple(keep), grow=0)
            else:
                plan[name] = Resize(keep=tuple(range(layer.rank)), grow=change)
        controller.resize(plan)
        if isinstance(self.tracker, Sensitivity):
            for name, resize in plan.items():
                self.tracker.remap(name, list(resize.keep), resize.grow)
        moved = sum(max(0, targets[n] - current[n]) for n in current)
        controller.record("realloc", moved=moved, importance={n: round(s, 6) for n, s in scores.items()},
                          dropped_delta=round(dropped / total, 6) if total else 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict(), "budget": self.budget}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.tracker.load_state_dict(state["tracker"])
        self.budget = int(state["budget"])


def _partial_delta(layer: LoraLayer, ranks: list[int]) -> torch.Tensor:
    """The part of ``scale * B diag(c) A`` carried by the given ranks: (out, in)."""
    idx = torch.tensor(ranks, dtype=torch.long, device=layer.lora_A.device)
    b = layer.lora_B.detach().index_select(1, idx)
    if layer.gate is not None:
        b = b * layer.gate.detach().index_select(0, idx)
    return (b @ layer.lora_A.detach().index_select(0, idx)) * layer.scale
