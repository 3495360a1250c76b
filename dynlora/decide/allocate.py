"""Rank allocators: pure functions from scores and a budget to a rank plan.

They never see a step number, the model or the optimizer: values in, ``Resize`` plan out. The
controller applies the plan through the one resize path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dynlora.decide.plan import Resize
from dynlora.errors import DynloraError


@dataclass(frozen=True)
class RankPlan:
    """What an allocator decided: a resize per module that changes, and what it could not place."""

    resizes: dict[str, Resize]
    pruned: dict[str, int] = field(default_factory=dict)  # ranks removed per module
    grown: dict[str, int] = field(default_factory=dict)  # ranks added per module
    recycled: int = 0  # freed ranks handed back to modules that pruned (no non-pruning module had room)
    unplaced: int = 0  # freed ranks no module could take (max_rank everywhere): the budget shrank

    @property
    def moved(self) -> int:
        return sum(self.grown.values())


def prune_and_redistribute(gates: Mapping[str, Sequence[float]], threshold: float, min_rank: int = 1,
              max_rank: int | None = None) -> RankPlan:
    """Prune ranks whose gate is under ``threshold`` and give them to the other modules (same total).

    Each module keeps at least ``min_rank`` ranks (its largest gates). Freed ranks go one at a time,
    round-robin, to the modules that did not prune in this event, ordered by their smallest gate,
    largest first (a module whose weakest rank is still strong wants more); ``max_rank`` caps a module.
    Only when those are all full (or every module pruned) do the rest go back, as fresh ranks, to
    the modules that pruned (``recycled``), in the same order by their smallest surviving gate. The
    total rank is unchanged unless every module is at ``max_rank`` (reported as ``unplaced``).
    """
    resizes: dict[str, Resize] = {}
    pruned: dict[str, int] = {}
    keep_of: dict[str, list[int]] = {}
    for name, values in gates.items():
        values = [float(v) for v in values]
        keep = [i for i, v in enumerate(values) if not v < threshold]
        if len(keep) < min(min_rank, len(values)):
            strongest = sorted(range(len(values)), key=lambda i: (-values[i], i))[: min(min_rank, len(values))]
            keep = sorted(strongest)
        if len(keep) < len(values):
            pruned[name] = len(values) - len(keep)
        keep_of[name] = keep
    freed = sum(pruned.values())
    size = {n: len(keep_of[n]) for n in gates}
    grown = {n: 0 for n in gates}

    def weakest(n: str) -> float:
        kept = [float(gates[n][i]) for i in keep_of[n]]
        return min(kept) if kept else 0.0

    def deal(receivers: list[str], count: int) -> int:
        """Round-robin ``count`` ranks over ``receivers`` (in order) under max_rank; returns how many."""
        room = {n: (max_rank - size[n] - grown[n] if max_rank is not None else count) for n in receivers}
        open_ = [n for n in receivers if room[n] > 0]
        placed = 0
        while placed < count and open_:
            for name in list(open_):
                if placed == count:
                    break
                grown[name] += 1
                room[name] -= 1
                placed += 1
                if room[name] == 0:
                    open_.remove(name)
        return placed

    order = {n: i for i, n in enumerate(gates)}
    first = sorted((n for n in gates if n not in pruned and size[n] > 0), key=lambda n: (-weakest(n), order[n]))
    placed = deal(first, freed)
    # Nobody that kept all its ranks has room: recycle the rest into the pruners as fresh ranks
    # rather than shrink the budget.
    second = sorted((n for n in pruned), key=lambda n: (-weakest(n), order[n]))
    recycled = deal(second, freed - placed)
    for name in gates:
        if name in pruned or grown[name]:
            resizes[name] = Resize(keep=tuple(keep_of[name]), grow=grown[name])
    return RankPlan(resizes=resizes, pruned=pruned, grown={n: g for n, g in grown.items() if g},
                    recycled=recycled, unplaced=freed - placed - recycled)


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
                         max_rank: int | None = None) -> dict[str, int]:
    """Divide ``budget`` ranks in proportion to ``scores``, each within [min_rank, max_rank].

    Shares are ``clamp(lam * score, min_rank, max_rank)`` with ``lam`` found by bisection so that they
    sum to the budget (water filling); they are then floored and the rounding remainder goes, one rank
    each, to the most important modules that still have room. The result sums to ``budget`` exactly.
    """
    names = list(scores)
    n = len(names)
    cap = max_rank if max_rank is not None else budget
    if not n:
        return {}
    if budget < n * min_rank or budget > n * cap:
        raise ValueError(f"budget {budget} cannot be split over {n} modules within [{min_rank}, {cap}]")
    weights = {k: max(0.0, float(v)) for k, v in scores.items()}
    top = max(weights.values())
    if top <= 0:
        weights = {k: 1.0 for k in names}
    else:  # a zero score still gets its min_rank, and a share of what nobody else can take
        weights = {k: w / top if w / top > 1e-9 else 1e-9 for k, w in weights.items()}

    def filled(lam: float) -> dict[str, float]:
        return {k: min(cap, max(min_rank, lam * weights[k])) for k in names}

    lo_lam, hi_lam = 0.0, 1.0
    while sum(filled(hi_lam).values()) < budget:  # f(lam) grows with lam: find a bracket, then bisect
        hi_lam *= 2
    for _ in range(200):
        mid = (lo_lam + hi_lam) / 2
        if sum(filled(mid).values()) < budget:
            lo_lam = mid
        else:
            hi_lam = mid
    exact = filled(hi_lam)
    targets = {k: int(exact[k] // 1) for k in names}
    order = sorted(names, key=lambda k: (-weights[k], names.index(k)))
    remainder = budget - sum(targets.values())
    while remainder > 0:
        for k in order:
            if remainder == 0:
                break
            if targets[k] < cap:
                targets[k] += 1
                remainder -= 1
    return targets


def limit_moves(current: Mapping[str, int], targets: Mapping[str, int], max_moves: int | None,
                priority: Mapping[str, float] | None = None) -> dict[str, int]:
    """Move at most ``max_moves`` ranks from ``current`` toward ``targets``, one rank at a time.

    Each move takes a rank from the module furthest above its target and gives it to the module
    furthest below (ties: higher ``priority`` receives first, lower gives first). The total is kept.
    """
    if sum(current.values()) != sum(targets.values()):
        raise ValueError("current and target ranks must have the same total")
    result = dict(current)
    moves = sum(max(0, targets[k] - current[k]) for k in current)
    if max_moves is None or moves <= max_moves:
        return dict(targets)
    priority = priority or {}
    names = list(current)
    for _ in range(max_moves):
        giver = max(names, key=lambda k: (result[k] - targets[k], -priority.get(k, 0.0), -names.index(k)))
        taker = max(names, key=lambda k: (targets[k] - result[k], priority.get(k, 0.0), -names.index(k)))
        if result[giver] - targets[giver] <= 0 or targets[taker] - result[taker] <= 0:
            break
        result[giver] -= 1
        result[taker] += 1
    return result
