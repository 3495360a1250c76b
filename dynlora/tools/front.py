"""Where a method stands against LoRA's front: pure functions over (cost, metric) points, no plotting.

LoRA's front is the line through its mean metric at each budget, ordered by cost (trainable parameters
or adapter FLOPs). A method's point is ``above``, ``on`` or ``below`` it by the front's value at the
method's cost (linear between LoRA's points; a cost outside them compares with the nearest end), with
``on`` meaning within the larger of the method's seed standard deviation and the front's there. The
front's spread is interpolated like its value: a point next to LoRA's budget-2 point is held to that
point's spread, not to a far neighbour's (taking the larger neighbour's spread called a method 0.8 points
under a 0.6-spread point "on" because the budget-1 point had 1.5).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Point:
    """One method at one budget: mean and std over seeds of its cost and its metric."""

    method: str
    budget: int
    cost: float
    metric: float
    metric_std: float
    seeds: int


def points(rows_by_budget: Mapping[int, Sequence[Mapping[str, Any]]], cost_key: str, metric: str) -> list[Point]:
    """Mean (std) over seeds per (budget, method)."""
    out = []
    for budget, rows in sorted(rows_by_budget.items()):
        methods = dict.fromkeys(str(r["method"]) for r in rows)
        for method in methods:
            group = [r for r in rows if r["method"] == method]
            values = [float(r[metric]) for r in group]
            out.append(Point(method, budget, statistics.fmean(float(r[cost_key]) for r in group),
                             statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0,
                             len(group)))
    return out


def front_value(front: Sequence[Point], cost: float) -> Point:
    """LoRA's front at ``cost``: a point interpolated between its two neighbours (or its nearest end)."""
    line = sorted(front, key=lambda p: p.cost)
    if cost <= line[0].cost:
        return line[0]
    if cost >= line[-1].cost:
        return line[-1]
    for lo, hi in zip(line, line[1:]):
        if lo.cost <= cost <= hi.cost:
            t = (cost - lo.cost) / (hi.cost - lo.cost) if hi.cost > lo.cost else 0.0
            return Point("front", lo.budget, cost, lo.metric + t * (hi.metric - lo.metric),
                         lo.metric_std + t * (hi.metric_std - lo.metric_std), min(lo.seeds, hi.seeds))
    return line[-1]


def position(point: Point, front: Sequence[Point], higher_is_better: bool = True) -> str:
    """``above``, ``on`` or ``below`` LoRA's front."""
    ref = front_value(front, point.cost)
    gap = point.metric - ref.metric if higher_is_better else ref.metric - point.metric
    tolerance = max(point.metric_std, ref.metric_std)
    return "above" if gap > tolerance else "below" if gap < -tolerance else "on"
