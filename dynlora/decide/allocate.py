"""Rank allocators: pure functions from scores and a budget to a rank plan.

They never see a step number, the model or the optimizer: values in, ``Resize`` plan out. The
controller applies the plan through the one resize path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dynlora.core.count import idle_fixed
from dynlora.decide.plan import Resize
from dynlora.errors import DynloraError


@dataclass(frozen=True)
class RankPlan:
    """What an allocator decided: a resize per module that changes, and what it could not place."""

    resizes: dict[str, Resize]
    pruned: dict[str, int] = field(default_factory=dict)  # ranks removed per module
    grown: dict[str, int] = field(default_factory=dict)  # ranks added per module
    recycled: int = 0  # freed budget handed back to modules that pruned (no non-pruning module had room)
    unplaced: int = 0  # freed budget no module could take though it pays for a rank (max_rank everywhere)
    # recycled / unplaced are in the budget's unit: ranks, or parameters / FLOPs when ranks have costs

    @property
    def moved(self) -> int:
        return sum(self.grown.values())


REASSIGN = ("spread", "strongest", "need", "none")


def per_rank(costs: Mapping[str, int] | None, names: Iterable[str]) -> dict[str, int]:
    """What one rank of each module costs in the budget's unit: ``costs``, or 1 each (a budget in ranks)."""
    return {n: costs[n] if costs else 1 for n in names}


def prune_and_redistribute(gates: Mapping[str, Sequence[float]], threshold: float, min_rank: int = 1,
                           max_rank: int | None = None, costs: Mapping[str, int] | None = None,
                           budget: int | None = None, reassign: str = "spread",
                           need: Mapping[str, float] | None = None) -> RankPlan:
    """Prune ranks whose gate is under ``threshold`` and give the budget they free to the other modules.

    Each module keeps at least ``min_rank`` ranks (its largest gates). The receivers are the modules
    that did not prune in this event, ordered by their smallest gate, largest first (a module whose
    weakest rank is still strong wants more); ``max_rank`` caps a module. ``reassign``: ``spread`` (the
    published rule) deals the freed ranks one at a time, round-robin, over the receivers;
    ``strongest`` fills each receiver in that order before the next; ``need`` gives each next rank to the
    receiver with the most ``need`` (a score per module) per rank it would then hold and per unit of cost
    (D'Hondt's rule: the receivers' shares move toward proportion to their need); ``none`` keeps them
    unspent (the ranks shrink below the budget). Only when the receivers are all full (or every module pruned) do
    the rest go back, as fresh ranks, to the modules that pruned (``recycled``), in the same order by
    their smallest surviving gate.

    ``costs``: what one rank of each module costs in the budget's unit (parameters, FLOPs; default 1:
    ranks), and ``budget`` the total the ranks may cost (default: what they cost now). A receiver gets a
    rank only while the budget still pays for it, so the ranks end costing at most ``budget``, and less
    by under one rank of the costliest module unless every module is at ``max_rank`` (``unplaced``).
    """
    if reassign not in REASSIGN:
        raise ValueError(f"reassign {reassign!r}: valid: {', '.join(REASSIGN)}")
    if reassign == "need" and (need is None or not set(gates) <= set(need)):
        raise ValueError("reassign 'need' takes a need score for every module")
    resizes: dict[str, Resize] = {}
    pruned: dict[str, int] = {}
    keep_of: dict[str, list[int]] = {}
    cost = per_rank(costs, gates)
    for name, values in gates.items():
        values = [float(v) for v in values]
        keep = [i for i, v in enumerate(values) if not v < threshold]
        if len(keep) < min(min_rank, len(values)):
            strongest = sorted(range(len(values)), key=lambda i: (-values[i], i))[: min(min_rank, len(values))]
            keep = sorted(strongest)
        if len(keep) < len(values):
            pruned[name] = len(values) - len(keep)
        keep_of[name] = keep
    total = budget if budget is not None else sum(len(v) * cost[n] for n, v in gates.items())
    freed = total - sum(len(keep_of[n]) * cost[n] for n in gates)
    size = {n: len(keep_of[n]) for n in gates}
    grown = {n: 0 for n in gates}
    order = {n: i for i, n in enumerate(gates)}

    def weakest(n: str) -> float:
        kept = [float(gates[n][i]) for i in keep_of[n]]
        return min(kept) if kept else 0.0

    def deal(receivers: list[str], amount: int) -> int:
        """Ranks to ``receivers`` (in order: round-robin, or each filled in turn) while ``amount`` pays for
        them, under max_rank; returns what they cost."""
        if reassign == "none":
            return 0
        room = {n: (max_rank - size[n] - grown[n] if max_rank is not None else amount) for n in receivers}
        open_ = [n for n in receivers if room[n] > 0]
        spent = 0

        def turn() -> list[str]:
            if reassign == "spread":
                return list(open_)
            if reassign == "need":  # D'Hondt: the most need per rank held after this one, per unit of cost
                return [max(open_, key=lambda n: (max(0.0, float(need[n])) / ((size[n] + grown[n] + 1) * cost[n]),
                                                  -order[n]))]
            return open_[:1]

        while open_:
            for name in turn():
                if spent + cost[name] > amount:  # the budget left cannot pay for this module's rank
                    open_.remove(name)
                    continue
                grown[name] += 1
                room[name] -= 1
                spent += cost[name]
                if room[name] == 0:
                    open_.remove(name)
        return spent

    first = sorted((n for n in gates if n not in pruned and size[n] > 0), key=lambda n: (-weakest(n), order[n]))
    placed = deal(first, freed)
    # Nobody that kept all its ranks has room: recycle the rest into the pruners as fresh ranks
    # rather than shrink the budget.
    second = sorted((n for n in pruned), key=lambda n: (-weakest(n), order[n]))
    recycled = deal(second, freed - placed)
    left = freed - placed - recycled
    for name in gates:
        if name in pruned or grown[name]:
            resizes[name] = Resize(keep=tuple(keep_of[name]), grow=grown[name])
    unplaced = left if gates and left >= min(cost.values()) and reassign != "none" else 0
    return RankPlan(resizes=resizes, pruned=pruned, grown={n: g for n, g in grown.items() if g},
                    recycled=recycled, unplaced=unplaced)


def check_rank_bounds(method: str, budget: int, modules: int, min_rank: int, max_rank: int | None) -> None:
    """A ``DynloraError`` if ``budget`` ranks cannot be split over ``modules`` within [min_rank, max_rank]."""
    if budget < modules * min_rank:
        raise DynloraError(f"{method}: min_rank {min_rank} x {modules} adapters needs {modules * min_rank} ranks, more "
                           f"than the rank budget {budget}; lower --min-rank or raise --rank / --rank-budget")
    if max_rank is not None and budget > modules * max_rank:
        raise DynloraError(f"{method}: max_rank {max_rank} x {modules} adapters holds {modules * max_rank} ranks, "
                           f"less than the rank budget {budget}; raise --max-rank or lower --rank / --rank-budget")


def even_ranks(names: Sequence[str], budget: int, min_rank: int = 1) -> dict[str, int]:
    """Split ``budget`` ranks over ``names`` as evenly as possible (earlier names take the remainder)."""
    if budget < len(names) * min_rank:
        raise ValueError(f"budget {budget} is smaller than {len(names)} modules x min_rank {min_rank}")
    base, extra = divmod(budget, len(names))
    return {name: base + (1 if i < extra else 0) for i, name in enumerate(names)}


def proportional_targets(scores: Mapping[str, float], budget: int, min_rank: int = 1,
                         max_rank: int | None = None, costs: Mapping[str, int] | None = None,
                         fixed: Mapping[str, int] | None = None) -> dict[str, int]:
    """Divide ``budget`` in proportion to ``scores``: each module's ranks within [min_rank, max_rank].

    ``costs``: what one rank of each module costs in the budget's unit (default 1: ``budget`` is ranks).
    A module's share of the budget is ``clamp(lam * score / cost, min_rank, max_rank) * cost``, with
    ``lam`` found by bisection so that the shares spend the budget (water filling); ranks are then
    floored and what is left buys one more rank each, largest remainder first, while it pays for one.
    In ranks the result sums to ``budget`` exactly; with costs it costs at most ``budget``, and less by
    under one rank of the costliest module that still has room.

    ``fixed``: what each module costs at any rank >= 1 and not at rank 0 (an input gate), already paid out
    of ``budget`` for every module. With ``min_rank`` 0 a module left at rank 0 hands its fixed cost back
    and the split is redone over the others with it, until every module kept holds a rank: the result's
    ranks cost at most ``budget`` plus the fixed costs of the modules at rank 0.
    """
    if fixed is None or min_rank > 0 or not any(fixed.values()):  # nothing a module at rank 0 could hand back
        return _proportional(scores, budget, min_rank, max_rank, costs)
    live = list(scores)
    while True:
        freed = sum(fixed[k] for k in scores if k not in live)
        targets = _proportional({k: scores[k] for k in live}, budget + freed, 0, max_rank, costs)
        dead = [k for k in live if targets[k] == 0]
        if not dead or len(dead) == len(live):
            return {k: targets.get(k, 0) for k in scores}
        live = [k for k in live if k not in dead]


def _proportional(scores: Mapping[str, float], budget: int, min_rank: int, max_rank: int | None,
                  costs: Mapping[str, int] | None) -> dict[str, int]:
    names = list(scores)
    n = len(names)
    cost = per_rank(costs, names)
    cap = {k: max_rank if max_rank is not None else budget // cost[k] for k in names}
    if not n:
        return {}
    if budget < sum(min_rank * cost[k] for k in names):
        raise ValueError(f"budget {budget} cannot be split over {n} modules within [{min_rank}, "
                         f"{max_rank if max_rank is not None else budget}]")
    weights = {k: max(0.0, float(v)) for k, v in scores.items()}
    top = max(weights.values())
    if top <= 0:
        weights = {k: 1.0 for k in names}
    else:  # a zero score still gets its min_rank, and a share of what nobody else can take
        weights = {k: w / top if w / top > 1e-9 else 1e-9 for k, w in weights.items()}

    def filled(lam: float) -> dict[str, float]:
        return {k: min(cap[k], max(min_rank, lam * weights[k] / cost[k])) for k in names}

    def spent(ranks: Mapping[str, float]) -> float:
        return sum(ranks[k] * cost[k] for k in names)

    most = spent(cap)
    lo_lam, hi_lam = 0.0, 1.0
    while spent(filled(hi_lam)) < min(budget, most):  # f(lam) grows with lam: find a bracket, then bisect
        hi_lam *= 2
    for _ in range(200):
        mid = (lo_lam + hi_lam) / 2
        if spent(filled(mid)) < budget:
            lo_lam = mid
        else:
            hi_lam = mid
    exact = filled(hi_lam)
    targets = {k: int(exact[k] // 1) for k in names}
    # largest remainder first (ties: importance): a module whose exact share is 1.98 ranks keeps 2; by importance
    # alone it would drop to 1 and its rank go to a stronger module already at its share (scores equal up to
    # noise moved ranks). It is not where the planted benchmark's null-case cost comes from: with this rounding
    # the sensitivity split still moved 71-74 ranks there at an error of 0.037 (scores differ between modules)
    order = sorted(names, key=lambda k: (-(exact[k] - targets[k]), -weights[k], names.index(k)))
    left = budget - spent(targets)
    while True:  # one more rank each, in that order, while the budget pays for one
        given = 0
        for k in order:
            if targets[k] < cap[k] and cost[k] <= left:
                targets[k] += 1
                left -= cost[k]
                given += 1
        if not given:
            return targets


def limit_moves(current: Mapping[str, int], targets: Mapping[str, int], max_moves: int | None,
                priority: Mapping[str, float] | None = None, costs: Mapping[str, int] | None = None,
                budget: int | None = None) -> dict[str, int]:
    """Move at most ``max_moves`` ranks from ``current`` toward ``targets``, one rank at a time.

    Each move takes a rank from the module furthest above its target (ties: lower ``priority`` gives first)
    and what it frees buys ranks for the modules furthest below theirs (ties: higher ``priority`` receives
    first) while it pays for them, in the unit of ``budget`` (``costs``: one rank of each module; default 1,
    ranks, where a move hands one rank on and the total is kept). ``max_moves`` counts the ranks taken; the
    result never costs more than ``budget`` (default: what ``current`` costs).
    """
    cost = per_rank(costs, current)
    return _limit_costed_moves(current, targets, max_moves, priority or {}, cost,
                               budget if budget is not None else sum(current[k] * cost[k] for k in current))


def _limit_costed_moves(current: Mapping[str, int], targets: Mapping[str, int], max_moves: int | None,
                        priority: Mapping[str, float], costs: Mapping[str, int], budget: int) -> dict[str, int]:
    names = list(current)
    taken = sum(max(0, current[k] - targets[k]) for k in names)
    if max_moves is None or taken <= max_moves:
        return dict(targets)
    result = dict(current)
    left = budget - sum(result[k] * costs[k] for k in names)
    for move in range(max_moves + 1):
        while True:  # buy ranks for the modules furthest below their targets while the budget pays
            short = [k for k in names if targets[k] > result[k] and costs[k] <= left]
            if not short:
                break
            taker = max(short, key=lambda k: (targets[k] - result[k], priority.get(k, 0.0), -names.index(k)))
            result[taker] += 1
            left -= costs[taker]
        if move == max_moves or not any(targets[k] > result[k] for k in names):
            break
        giver = max(names, key=lambda k: (result[k] - targets[k], -priority.get(k, 0.0), -names.index(k)))
        if result[giver] <= targets[giver]:
            break
        result[giver] -= 1
        left += costs[giver]
    return result


def hold_receivers(current: Mapping[str, int], targets: Mapping[str, int], ready: Mapping[str, bool],
                   priority: Mapping[str, float] | None = None, costs: Mapping[str, int] | None = None,
                   budget: int | None = None) -> dict[str, int]:
    """``targets`` in which a module that is not ``ready`` receives nothing: its target is at most its current rank.

    What those modules would have received goes back to the modules below their current rank, one rank at a
    time to the one cut furthest (ties: higher ``priority`` first), while ``budget`` pays for it (in the unit
    of ``costs``, one rank of each module; default: ranks, and the budget the targets' total): fewer ranks
    leave where fewer can be taken in, and the result never costs more than ``budget``.
    """
    cost = per_rank(costs, targets)
    result = {k: min(t, current[k]) if not ready.get(k, True) else t for k, t in targets.items()}
    if budget is None:
        budget = sum(targets[k] * cost[k] for k in targets)
    left = budget - sum(result[k] * cost[k] for k in result)
    priority = priority or {}
    names = list(result)
    while True:
        cut = [k for k in names if result[k] < current[k] and cost[k] <= left]
        if not cut:
            return result
        k = max(cut, key=lambda n: (current[n] - result[n], priority.get(n, 0.0), -names.index(n)))
        result[k] += 1
        left -= cost[k]


def fit_to_budget(ranks: Mapping[str, int], costs: Mapping[str, int], budget: int,
                  min_rank: int = 1, fixed: Mapping[str, int] | None = None) -> dict[str, int]:
    """``ranks`` with the fewest ranks removed so that they cost at most ``budget``: one rank at a time from
    the module whose ranks cost the most (ties: the first), never below ``min_rank``. ``fixed``: as in
    ``proportional_targets``, a module that drops to rank 0 hands its fixed cost back to the budget. A
    ``ValueError`` when even ``min_rank`` everywhere costs more."""
    result = dict(ranks)
    names = list(result)
    if sum(min(min_rank, result[k]) * costs[k] for k in names) > budget + idle_fixed(fixed, {
            k: min(min_rank, result[k]) for k in names}):
        raise ValueError(f"{min_rank} rank(s) per module cost more than the budget {budget}")
    while sum(result[k] * costs[k] for k in names) > budget + idle_fixed(fixed, result):
        giver = max((k for k in names if result[k] > min_rank), key=lambda k: (result[k] * costs[k], -names.index(k)))
        result[giver] -= 1
    return result
