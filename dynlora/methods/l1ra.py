"""L1RA: L1-regularised rank assignment under a fixed total rank (Singh et al., 2025, arXiv 2509.04884).

Every adapter carries a gate per rank, ``h += ((x @ A.T) * c) @ B.T * scale``, with c in [0, 1].
Per step (``per_step``), after the optimizer step, the gates take a decoupled L1 proximal step::

    c <- clamp(c - lr_c * lambda, 0, 1)

where ``lr_c`` is the learning rate the optimizer just used for the gates (their param group's lr,
so it follows the schedule; ``L1RAConfig.lr_c`` when there is no optimizer). At every scheduled step
(``decide``) the ranks whose gate fell under ``threshold`` are cut out and handed to the adapters
that did not prune (``decide.allocate.prune_and_redistribute``), so the sum of ranks stays the
budget. Unlike the published code, the optimizer is not restarted: the controller's surgery keeps
the surviving ranks' Adam moments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dynlora.core.count import optimizable_parameters
from dynlora.core.inject import adapters
from dynlora.core.layer import LoraLayer
from dynlora.decide.allocate import REASSIGN, check_rank_bounds, prune_and_redistribute
from dynlora.decide.plan import Plan, Resize
from dynlora.decide.schedule import Schedule
from dynlora.errors import DynloraError
from dynlora.methods.base import AdapterNeeds, MethodBase, MethodSpec, View
from dynlora.methods.config import check_knobs, knob
from dynlora.methods.registry import register
from dynlora.observe.gates import gate_summary
from dynlora.observe.sensitivity import Sensitivity


@dataclass(frozen=True)
class L1RAConfig:
    """L1RA's knobs.

    ``pull`` 1 (lambda = pull / (lr_c x steps), so the strength follows the run's length) and ``lr_c`` 2e-2,
    chosen on the **validation** split (``bench/results/search-l1ra-*``: MiniLM, 188 steps, average rank 2
    counted in parameters, seeds 0 and 1). Validation accuracy, rt-polarity / trec6: LoRA 78.4 / 87.2,
    pull 1 79.0 / 85.9, pull 2 77.9 / 85.8, pull 4 76.8 / 82.0, pull 8 75.2 / 83.8; the gates without L1
    (pull 0, nothing moves) 79.1 / 86.4; lr_c 5e-3 with pull 1 78.5 / 86.0. The more rank moves in runs this
    short, the worse: pull 1 is the smallest pull tried that moves rank (3 of 37 modules end off rank 2,
    where pull 2 moves 16-24) and is within the seeds' spread of not moving any. Reallocating every 5 / 10 /
    25 % of the run at pull 1: 78.3 / 79.0 / 78.7 and 85.8 / 85.9 / 86.2, within the spread: 10 %, as in the
    paper. Where the freed ranks go (``reassign``), at pull 1 / pull 2: spread 79.0 / 77.9 and 85.9 / 85.8,
    strongest 78.9 / 77.9 and 86.2 / 85.6, none 78.8 / 77.7 and 85.8 / 85.7 (none at pull 2 trains 0.82x /
    0.91x LoRA's parameters): within the spread, so the paper's spread stays. ``threshold`` 1e-6: only
    gates the proximal step drove to 0 are cut, so pruning does not move the output.

    On the known-answer benchmark (``bench/results/planted-minilm-l1ra``, average rank 2, seed 0) pull 1 moves
    no rank in 300 steps. Where rank moves, where it goes decides the gain: pull 3 closes 23 % of the
    uniform-to-oracle gap with ``spread`` (71 % of the planted rank covered), 16 % with ``strongest``, 59 % with
    ``need`` (95 % covered: freed ranks go to the modules whose ranks carry the most |theta * grad|); pull 2
    21 % / 25 %. But the pull itself costs where nothing is to be gained: in the null case (rank 1 planted
    everywhere) the gates alone (pull 0) cost +10 % of uniform's error, pull 1 +29 %, pull 3 +129 % whatever the
    rule (the L1 step shrinks every gate, and B has to grow back what it takes). On validation
    (``bench/results/search-l1ra-need-*``, average rank 2 in parameters, 2 seeds) rt-polarity / trec6: pull 1
    spread 78.7 / 85.9, need + pull 2 78.0 / 87.1, need + pull 3 76.7 / 86.3. So the defaults stay (pull 1, at
    which few ranks move and the rule hardly matters); raise the pull with ``--l1ra-reassign need``.
    """

    lam: float | None = knob(None, "L1 strength on the gates (default: --l1ra-pull spread over the run)",
                             flag="--l1ra-lambda", type=float, ge=0)
    pull: float = knob(1.0, "how far the L1 step pulls a gate over the whole run at the peak learning rate, "
                       "whatever its length (lambda = pull / (lr_c x steps))", flag="--l1ra-pull", ge=0)
    lr_c: float = knob(2e-2, "the gates' learning rate lr_c", flag="--l1ra-lr", gt=0)
    threshold: float = knob(1e-6, "prune gates under this", flag="--l1ra-threshold", ge=0, lt=1)
    reassign: str = knob("spread", "where freed ranks go: spread (round-robin over the adapters that did not "
                                   "prune, strongest weakest gate first, as in the paper's code), strongest (fill "
                                   "them in that order), need (to the adapters whose ranks carry the most "
                                   "sensitivity |theta * grad|, in proportion), none (keep them unspent: prune only)",
                         flag="--l1ra-reassign", choices=REASSIGN)
    interval: float = knob(0.1, "steps between reallocations: a whole number, or a fraction (< 1) of the run",
                           flag="--l1ra-interval")
    min_rank: int = knob(1, "fewest ranks an adapter keeps", flag="--min-rank", ge=0)
    max_rank: int | None = knob(None, "most ranks an adapter may hold (default: no limit)", flag="--max-rank",
                                type=int, ge=1)

    def __post_init__(self) -> None:
        check_knobs(self)
        self.when()
        if self.max_rank is not None and self.max_rank < self.min_rank:
            raise DynloraError(f"max_rank {self.max_rank} must be >= min_rank {self.min_rank}")

    def when(self) -> Schedule:
        return Schedule.parse(self.interval, label="--l1ra-interval")

    def strength(self, total_steps: int) -> float:
        """lambda: ``lam`` when given, else ``pull`` spread over ``total_steps`` at the peak ``lr_c``."""
        return self.lam if self.lam is not None else self.pull / (self.lr_c * max(total_steps, 1))


@dataclass(frozen=True)
class Reallocation:
    """What one L1RA event did (written into the history)."""

    pruned: dict[str, int]
    grown: dict[str, int]
    moved: int
    recycled: int
    gates: dict[str, dict[str, float]]  # per module, after the event: min / mean / max, ranks under 0.1
    unplaced: int | None = None  # freed ranks no adapter could take (only when some were)
    note: str | None = None


def gate_param_groups(model: nn.Module, lr: float, config: L1RAConfig, weight_decay: float = 0.0
                      ) -> list[dict[str, Any]]:
    """Optimizer param groups: gates at ``lr_c`` without weight decay, every other trainable at ``lr``."""
    gates = [layer.gate for layer in adapters(model).values() if layer.gate is not None]
    gate_ids = {id(g) for g in gates}
    rest = [p for p in optimizable_parameters(model) if id(p) not in gate_ids]
    return [{"params": rest, "lr": lr, "weight_decay": weight_decay},
            {"params": gates, "lr": config.lr_c, "weight_decay": 0.0}]


def _after(values: Sequence[float], resize: Resize | None) -> list[float]:
    """A module's gates once ``resize`` is applied: kept gates, then 1 for each new rank."""
    if resize is None:
        return list(values)
    return [values[i] for i in resize.keep] + [1.0] * resize.grow


class L1RA(MethodBase):
    """Proximal gate step every optimizer step; prune-and-redistribute on the schedule."""

    name = "l1ra"

    def __init__(self, config: L1RAConfig, total_steps: int) -> None:
        self.config = config
        self.total_steps = total_steps
        self.schedule = config.when().for_run(total_steps)
        self.lam = config.strength(total_steps)
        self.events = 0
        # where freed ranks are needed: each module's summed |theta * grad| (EMA), read only by reassign "need"
        self.need = Sensitivity() if config.reassign == "need" else None
        self.trackers = (self.need,) if self.need is not None else ()

    def attach(self, layers: Mapping[str, LoraLayer]) -> None:
        """Refuse a ``min_rank`` the budget cannot give every adapter (no rank could ever be pruned)."""
        check_rank_bounds("l1ra", sum(layer.rank for layer in layers.values()), len(layers),
                          self.config.min_rank, None)

    @torch.no_grad()
    def per_step(self, step: int, view: View) -> None:
        """c <- clamp(c - lr_c * lambda, 0, 1) on every gate (lr_c as the schedule has it now)."""
        lrs = view.learning_rates()
        for layer in view.layers.values():
            if layer.gate is None or layer.rank == 0:
                continue
            layer.gate.sub_(lrs.get(id(layer.gate), self.config.lr_c) * self.lam).clamp_(0.0, 1.0)

    def own_lrs(self, layers: Mapping[str, LoraLayer]) -> dict[nn.Parameter, float]:
        """The gates train at ``lr_c`` in any optimizer (their own group, or a rescaled step)."""
        return {layer.gate: self.config.lr_c for layer in layers.values() if layer.gate is not None}

    def decide(self, step: int, view: View) -> Plan:
        gates = {n: layer.live_slots(layer.gate.detach()).tolist() for n, layer in view.layers.items()}
        plan = prune_and_redistribute(gates, self.config.threshold, self.config.min_rank,
                                      view.max_rank(self.config.max_rank),
                                      costs=view.budget.costs, budget=view.budget.total, reassign=self.config.reassign,
                                      need=self.need.scores() if self.need is not None else None)
        self.events += 1
        after = {n: _after(values, plan.resizes.get(n)) for n, values in gates.items()}
        note = None
        if plan.unplaced:
            note = f"{plan.unplaced} of the budget {view.budget.total} found no adapter under max_rank"
        detail = Reallocation(pruned=plan.pruned, grown=plan.grown, moved=plan.moved, recycled=plan.recycled,
                              gates=gate_summary(after), unplaced=plan.unplaced or None, note=note)
        return Plan("realloc", resizes=plan.resizes, detail=detail)

    def state_dict(self) -> dict[str, Any]:
        return {"events": self.events}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.events = int(state.get("events", 0))


SPEC = register(MethodSpec(
    name="l1ra",
    help="L1-regularised rank reallocation",
    config=L1RAConfig,
    build=L1RA,
    needs=lambda config: AdapterNeeds(gate=True),
    param_groups=gate_param_groups,
    min_rank=lambda config: config.min_rank,
    report_panels=("rank_by_type", "gates"),
))
