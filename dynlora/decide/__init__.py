"""Pure decisions: scores and a budget in, a plan out. No model, no optimizer, no step counter.

``allocate`` (rank plans), ``select`` (module sets), ``schedule`` (the one "when"), ``plan`` (what
the controller applies).
"""

from dynlora.decide.allocate import (
    RankPlan,
    check_rank_bounds,
    even_ranks,
    fit_to_budget,
    hold_receivers,
    idle_fixed,
    limit_moves,
    proportional_targets,
    prune_and_redistribute,
)
from dynlora.decide.plan import Plan, Resize
from dynlora.decide.schedule import Schedule
from dynlora.decide.select import select

__all__ = ["Plan", "RankPlan", "Resize", "Schedule", "check_rank_bounds", "even_ranks", "fit_to_budget",
           "hold_receivers", "idle_fixed", "limit_moves", "proportional_targets", "prune_and_redistribute", "select"]
