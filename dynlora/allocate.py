"""Rank allocators: pure functions from scores and a budget to a rank plan.

They never see a step number, the model or the optimizer: values in, ``Resize`` plan out. The
controller applies the plan through the one resize path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dynlora.controller import Resize


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


def l1ra_plan(gates: Mapping[str, Sequence[float]], threshold: float, min_rank: int = 1,
              max_rank: int | None = None) -> RankPlan:
    """L1RA's reallocation: prune ranks whose gate is under ``threshold``, give them to the others.

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


def even_ranks(names: Sequence[str], budget: int, min_rank: int = 1) -> dict[str, int]:
    """Split ``budget`` ranks over ``names`` as evenly as possible (earlier names take the remainder)."""
    if budget < len(names) * min_rank:
        raise ValueError(f"budget {budget} is smaller than {len(names)} modules x min_rank {min_rank}")
    base, extra = divmod(budget, len(names))
    return {name: base + (1 if i < extra else 0) for i, name in enumerate(names)}
