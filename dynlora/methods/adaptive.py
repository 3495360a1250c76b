"""Adaptive ranks: our reading of "dynamic LoRA" (Liao et al., 2025, arXiv 2501.14859; abstract only).

1. Layer importance during training: by default the sensitivity ``|theta * grad|`` of each adapter,
   EMA-smoothed (optionally times AdaLoRA's uncertainty term); alternatives: output norm, gate size. A
   rank's sensitivity sums its elements' (``elements``; AdaLoRA's triplet score averages them) and a
   module's sums its ranks' (``pool``; or their mean, or minimum: whether every rank it holds is needed).
   Both sums favour wide modules and modules that already hold rank, yet they placed rank best on the
   planted benchmark (``bench/results/planted-minilm-adaptive``: MiniLM, 300 steps, average rank 2 in
   ranks, seed 0; uniform LoRA 0.227, the oracle 0.049): element means 0.059, element sums 0.043 (the
   sums of both kinds give the wide FFN modules the ranks planted there; with means one attention output
   took 21 ranks for its 4). Under a budget in parameters the proportional split divides each module's
   score by what its rank costs, which takes the width back out of an element sum.
2. At every scheduled step after a warm-up, the fixed budget (sum of ranks) is re-divided in
   proportion to importance within [min_rank, max_rank] (``decide.allocate.proportional_targets``); at
   most ``max_moves`` ranks move per event (``decide.allocate.limit_moves``). Every 5 % of the run after
   a 5 % warm-up (it was 10 % and 10 %): a rank moved early has the rest of the run to train. On the
   planted benchmark that took the error from 0.084 to 0.043 (element sums; with means 0.184 to 0.059;
   at 900 steps the old schedule with means reached 0.019, the oracle 0.0014: ``planted-minilm-900``). On
   the validation splits (2 seeds each): rt-polarity 78.1 % against 78.0 % (element means; LoRA 78.4 %,
   all within the seeds' spread; ``bench/results/search-adaptive-rt-polarity``), trec6 89.2 % against
   88.3 % (element sums; LoRA 87.2 %, element means 89.8 %, within the spread;
   ``bench/results/search-adaptive-trec6``).
3. Optionally (``adaptive:gate``; off by default, a departure from the paper) an input-feature gate
   ``g(x) = sigmoid(w . x + b)`` per adapter (``LoraLayer``). Under a budget in parameters the gates are paid
   out of the ranks: half a rank of each module at an average rank of 1, a quarter at 2. Validation at an
   average rank of 1 (``bench/results/search-adaptive-gate-*``, 2 seeds, lr 1e-3): gated 74.5 % on
   rt-polarity and 85.0 % on trec6; without gates and with ``min_rank`` 0 (so that rank can move at all)
   78.2 % and 87.8 %; plain LoRA 78.4 % and 84.7 %. The planted benchmark in parameters
   (``bench/results/planted-minilm-params``, average rank 2): gated 0.251, worse than uniform LoRA's 0.227,
   without gates 0.115 (oracle 0.052). Where the gate is free (a budget in ranks) the two tied: MiniLM at
   rank 8, 84.1 / 83.9 % and 89.6 / 89.4 %; planted 0.184 / 0.179. Without the gate the adapter also exports
   to plain PEFT LoRA exactly, with no calibration set.

So that no event moves the output, a rank is never cut while it still contributes: at an event the
surplus ranks start to fade (the plan's ``fade``: the per-step hook lowers ``LoraLayer.fade`` by
1/interval, the other ranks can take over meanwhile), and at the next event the faded ranks (now exactly
0) are removed and the receivers grow the same number of fresh ranks (zero B). The total rank is the
budget at every moment; each move takes one interval to complete. Which ranks fade: a giving module is
first re-factorised into its singular directions, strongest first (``refactor``; ``core.refactor``: the
same product, its ranks' Adam state restarted), and its last ranks, the weakest directions, fade. LoRA
spreads what a module learned over all its ranks, so fading any one rank as it stands (``refactor`` off:
the ranks with the least sensitivity) takes a share of everything. On the planted benchmark's null case
(rank 1 planted everywhere: moving gains nothing) that took the error from 0.031 +- 0.003 to 0.029 +- 0.002
(3 seeds; uniform 0.024 +- 0.001), at average rank 1.25 from 67 % of the uniform-to-oracle gap closed to
74 %, at 2 unchanged (0.044); on validation at average rank 1 in parameters (``--min-rank 0``, 2 seeds,
``bench/results/search-adaptive-gate-*``) trec6 89.2 % against 87.8 %, rt-polarity 77.9 % against 78.2 %.

Importance is not need: a module whose one learned direction matters a lot scores high whether or not a
second rank would help it, so the proportional split keeps moving rank into modules that leave it idle
(the null case's 65-74 moves, its ranks piling into the wide FFN inputs and draining out again). With
``saturation`` (a departure from the paper, off by default) a module receives ranks only while the ranks it
holds are all in use: its adapter's weakest singular value at least that fraction of its strongest
(``core.refactor.singular_values``; a module growing fresh ranks waits until they are used;
``decide.allocate.hold_receivers`` hands what it would have taken back to the givers). On the planted
benchmark (``bench/results/planted-minilm-adaptive``), at 0.25: null 0.0252 +- 0.0015 against uniform's
0.0243 +- 0.0011 (3 seeds; 9 moves; without it 0.0285 +- 0.0021, 72 moves), planted at average rank 2 the
whole gap closed as before (seed 0: 0.049 against 0.044), at 1.25 78 +- 3 % against 74 % (3 seeds); at 0.5
null 0.0245 +- 0.0011 (6 moves) but planted 87 %; at 0.1 null 0.0290 (no gain). On validation at average
rank 1 in parameters (``--min-rank 0``, ``search-adaptive-gate-*``) 0.25 gave rt-polarity 78.3 % against
77.9 % (2 seeds) and trec6 87.9 +- 1.4 % against 89.0 +- 0.3 % (4 seeds): the moves it holds back pay on
trec6, so it is not the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from dynlora.core.layer import LoraLayer
from dynlora.core.refactor import singular_values
from dynlora.decide.allocate import check_rank_bounds, hold_receivers, limit_moves, proportional_targets
from dynlora.decide.plan import Plan, Resize
from dynlora.decide.schedule import Schedule
from dynlora.errors import DynloraError
from dynlora.methods.base import AdapterNeeds, MethodBase, MethodSpec, View, capped
from dynlora.methods.config import check_knobs, knob
from dynlora.methods.registry import register
from dynlora.observe.activation import ActivationNorm
from dynlora.observe.gates import GateMagnitude, rank_magnitude
from dynlora.observe.sensitivity import ELEMENTS, POOLS, Sensitivity

SCORES = ("sensitivity", "activation", "gate")


@dataclass(frozen=True)
class AdaptiveConfig:
    """Knobs of the adaptive method; spans are steps or fractions of the run, moves a fraction of the budget."""

    score: str = knob("sensitivity", " | ".join(SCORES), flag="--importance", choices=SCORES)
    beta: float = knob(0.85, "EMA factor of the importance", flag="--importance-beta", ge=0, lt=1)
    uncertainty: bool = knob(False, "multiply sensitivity by its uncertainty (AdaLoRA)")
    pool: str = knob("sum", "a module's sensitivity from its ranks': sum (its total; grows with the ranks it "
                            "holds), mean, or min (its weakest rank: are all the ranks it holds needed)",
                     flag="--importance-pool", choices=POOLS)
    elements: str = knob("sum", "a rank's sensitivity from its elements' |theta * grad|: sum (the rank's whole "
                                "sensitivity), or mean over its A row and B column (AdaLoRA's triplet score)",
                         flag="--importance-elements", choices=ELEMENTS)
    interval: float = knob(0.05, "steps between reallocations: a whole number, or a fraction (< 1) of the run",
                           flag="--realloc-interval")
    warmup: float = knob(0.05, "steps (or fraction of the run) before the first reallocation",
                         flag="--realloc-warmup")
    min_rank: int = knob(1, "fewest ranks an adapter keeps", flag="--min-rank", ge=0)
    max_rank: int | None = knob(None, "most ranks an adapter may hold (default: no limit)", flag="--max-rank",
                                type=int, ge=1)
    max_moves: float = knob(0.1, "most ranks moved per event, as a fraction of the budget", gt=0, le=1)
    saturation: float = knob(0.0, "a module receives ranks only while the ranks it holds are all in use: its "
                                  "adapter's weakest singular value at least this fraction of its strongest "
                                  "(0: always)", ge=0, le=1)
    refactor: bool = knob(True, "re-factorise a giving module into its singular directions before its ranks "
                                "fade, so that its weakest directions fade (off: its least important ranks "
                                "by score, as they are)", before=False)
    input_gate: bool = knob(False, "per-token gate g(x) = sigmoid(w.x + b) on each adapter's output "
                                   "(adaptive:gate); off by default: under a budget in parameters it is paid "
                                   "out of the ranks")
    input_gate_bias: float = knob(4.0, "initial b of the input gate (g starts at sigmoid(b))")

    def __post_init__(self) -> None:
        check_knobs(self)
        if self.max_rank is not None and self.max_rank < max(1, self.min_rank):
            raise DynloraError(f"rank bounds [{self.min_rank}, {self.max_rank}] are not valid")
        self.when()

    def when(self) -> Schedule:
        return Schedule.parse(self.interval, warmup=self.warmup, label="--realloc-interval")


def parse_variant(variant: str, base: AdaptiveConfig) -> AdaptiveConfig:
    """``gate`` / ``no-gate`` switch the input gate."""
    if variant not in ("gate", "no-gate"):
        raise DynloraError(f"method {'adaptive:' + variant!r}: adaptive variants are adaptive:gate and "
                           "adaptive:no-gate")
    return replace(base, input_gate=variant == "gate")


@dataclass(frozen=True)
class Reallocation:
    """What one event did: ranks removed and grown now, ranks that start fading, and why."""

    removed: int
    grown: int
    moved: int = 0
    targets: dict[str, int] | None = None
    importance: dict[str, float] | None = None


class Adaptive(MethodBase):
    """Re-divide the rank budget by layer importance on the schedule."""

    name = "adaptive"

    def __init__(self, config: AdaptiveConfig, total_steps: int) -> None:
        self.config = config
        self.total_steps = total_steps
        self.schedule = config.when().for_run(total_steps)
        self.interval = int(self.schedule.n)
        if config.score == "sensitivity":
            self.tracker: Any = Sensitivity(config.beta, config.uncertainty, pool=config.pool,
                                            elements=config.elements)
        elif config.score == "activation":
            self.tracker = ActivationNorm(config.beta)
        else:
            self.tracker = GateMagnitude()
        self.trackers = (self.tracker,)
        self.pending: dict[str, int] = {}  # ranks owed to modules, granted when the fading ranks are gone

    def attach(self, layers: Mapping[str, LoraLayer]) -> None:
        total = sum(layer.rank for layer in layers.values())  # the budget is the controller's (View.budget)
        check_rank_bounds("adaptive", total, len(layers), self.config.min_rank, capped(self.config.max_rank, layers))
        for layer in layers.values():  # a no-op for adapters injected with the fade this method needs
            layer.enable_fade()  # all ones: the output does not move

    @torch.no_grad()
    def per_step(self, step: int, view: View) -> None:
        """Ranks on their way out lose 1/interval of their weight per step, reaching 0 at the next event."""
        for layer in view.layers.values():  # on the device: no step waits for it
            fade = layer.fade
            fade.copy_(torch.where(fade < 1, (fade - 1.0 / self.interval).clamp_(min=0.0), fade))
            fade.masked_fill_(fade < 1e-6, 0.0)

    def decide(self, step: int, view: View) -> Plan:
        resizes = self._finish(view.layers)
        removed = sum(view.layers[n].rank - len(r.keep) for n, r in resizes.items())
        grown = sum(self.pending.values())
        after = {n: len(resizes[n].keep) + resizes[n].grow if n in resizes else layer.rank
                 for n, layer in view.layers.items()}
        budget = view.budget
        spent = budget.spent(after)
        if spent > budget.total + budget.idle(after) or (budget.counts_ranks and removed != grown):
            raise RuntimeError(f"adaptive: {removed} faded ranks, {grown} owed: the ranks would cost {spent}, "
                               f"not the budget {budget.total}")
        self.pending = {}
        if step + self.interval >= self.total_steps:  # a fade started now could not finish
            return Plan("realloc", resizes=resizes, detail=Reallocation(removed=removed, grown=grown))
        fade, moved, targets, scores = self._start_fades(view, resizes)
        return Plan("realloc", resizes=resizes, refactor=tuple(fade) if self.config.refactor else (),
                    fade=fade, fade_steps=self.interval,
                    detail=Reallocation(removed=removed, grown=grown, moved=moved, targets=targets,
                                        importance={n: round(s, 6) for n, s in scores.items()}))

    def _finish(self, layers: Mapping[str, LoraLayer]) -> dict[str, Resize]:
        """Drop the ranks whose fade reached 0 and grow the modules owed them: the output does not move."""
        plan = {}
        for name, layer in layers.items():
            dead = int((layer.fade <= 0).sum())
            grow = self.pending.get(name, 0)
            if dead or grow:
                plan[name] = Resize(keep=tuple(i for i in range(layer.rank) if float(layer.fade[i]) > 0), grow=grow)
        return plan

    def _rank_order(self, name: str, layer: LoraLayer, resize: Resize | None) -> torch.Tensor:
        """(r,) importance of each rank of ``name`` once ``resize`` is applied."""
        if isinstance(self.tracker, Sensitivity):
            if resize is None:
                return self.tracker.rank_scores(name)
            return self.tracker.rank_scores_after(name, list(resize.keep), resize.grow)
        size = rank_magnitude(layer).float().cpu()
        if resize is None:
            return size
        # a fresh rank has a zero B column: magnitude 0
        kept = size.index_select(0, torch.tensor(resize.keep, dtype=torch.long))
        return torch.cat([kept, size.new_zeros(resize.grow)])

    def _in_use(self, layers: Mapping[str, LoraLayer], resizes: Mapping[str, Resize]) -> dict[str, bool]:
        """Per module: are all the ranks it will hold after ``resizes`` in use (``saturation``)? A module growing
        fresh ranks now is not (their B is zero); one at rank 0 is (it holds nothing idle)."""
        out = {}
        for name, layer in layers.items():
            resize = resizes.get(name)
            if resize is not None and resize.grow:
                out[name] = False
                continue
            keep = list(resize.keep) if resize is not None else list(range(layer.rank))
            if not keep:
                out[name] = True
                continue
            index = torch.tensor(keep, dtype=torch.long, device=layer.lora_A.device)
            s = singular_values(layer.lora_A.index_select(0, index), layer.gated_b().index_select(1, index))
            out[name] = bool(s.numel() and s[0] > 0 and s[-1] >= self.config.saturation * s[0])
        return out

    def _start_fades(self, view: View, resizes: Mapping[str, Resize]
                     ) -> tuple[dict[str, tuple[int, ...]], int, dict[str, int], dict[str, float]]:
        """New targets by importance; the surplus ranks start fading, the receivers are owed them."""
        layers = view.layers
        scores = self.tracker.scores_after(resizes) if isinstance(self.tracker, Sensitivity) else self.tracker.scores()
        current = {n: (len(resizes[n].keep) + resizes[n].grow if n in resizes else layer.rank)
                   for n, layer in layers.items()}
        # each module's share of the budget, in its unit (ranks, parameters, FLOPs), follows its score
        budget, floor = view.budget, self.config.min_rank
        if budget.total < sum(floor * budget.costs[n] for n in layers):  # the tightest budgets (input gates paid)
            floor = 0  # cannot give every module min_rank: the least important may drop to rank 0
        # at floor 0 a module left without rank hands its input gate's share back to the others
        targets = proportional_targets(scores, budget.total, floor, view.max_rank(self.config.max_rank),
                                       costs=budget.costs, fixed=budget.fixed)
        moves = max(1, int(self.config.max_moves * sum(current.values())))
        # a module at rank 0 before and after pays no gate; one on its way out pays until its ranks are gone
        total = budget.total + budget.idle(current, targets)
        if self.config.saturation > 0:
            targets = hold_receivers(current, targets, self._in_use(layers, resizes), priority=scores,
                                     costs=budget.costs, budget=total)
        targets = limit_moves(current, targets, moves, priority=scores, costs=budget.costs, budget=total)
        fade: dict[str, tuple[int, ...]] = {}
        moved = 0
        for name, layer in layers.items():
            change = targets[name] - current[name]
            if change > 0:
                self.pending[name] = change
            elif change < 0:
                if self.config.refactor:  # re-factorised, strongest direction first: the last ones fade
                    fade[name] = tuple(range(current[name] + change, current[name]))
                else:
                    order = self._rank_order(name, layer, resizes.get(name))
                    fade[name] = tuple(torch.argsort(order)[: -change].tolist())  # least important first
                moved += -change
        return fade, moved, targets, scores

    def state_dict(self) -> dict[str, Any]:
        return {"pending": dict(self.pending)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # a "budget" saved before 2026-12-05 is the view's
        self.pending = {k: int(v) for k, v in state.get("pending", {}).items()}


SPEC = register(MethodSpec(
    name="adaptive",
    help="importance-driven rank reallocation (+ an input gate: adaptive:gate)",
    config=AdaptiveConfig,
    build=Adaptive,
    variant=parse_variant,
    variant_help="adaptive:gate / adaptive:no-gate",
    needs=lambda config: AdapterNeeds(gate=config.score == "gate", input_gate=config.input_gate,
                                      input_gate_bias=config.input_gate_bias, fade=True),
    min_rank=lambda config: config.min_rank,
    report_panels=("rank_by_type",),
))
