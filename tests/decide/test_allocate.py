import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynlora.decide.allocate import even_ranks, prune_and_redistribute

gate_lists = st.lists(st.floats(min_value=0.0, max_value=1.0, allow_nan=False), min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([f"m{i}" for i in range(12)]), gate_lists, min_size=1),
       st.sampled_from([0.0, 1e-6, 0.05, 0.3]), st.integers(0, 2), st.one_of(st.none(), st.integers(2, 10)))
def test_budget_conserved_and_bounds_respected(gates, threshold, min_rank, max_rank):
    if max_rank is not None and max_rank < max(len(v) for v in gates.values()):
        max_rank = max(len(v) for v in gates.values())
    plan = prune_and_redistribute(gates, threshold, min_rank, max_rank)
    after = {n: len(v) for n, v in gates.items()}
    for name, resize in plan.resizes.items():
        assert len(set(resize.keep)) == len(resize.keep)
        after[name] = len(resize.keep) + resize.grow
    assert sum(after.values()) + plan.unplaced == sum(len(v) for v in gates.values())
    if plan.unplaced:
        assert max_rank is not None and all(after[n] == max_rank for n in gates)
    for name, values in gates.items():
        assert after[name] >= min(min_rank, len(values))
        if max_rank is not None and name in plan.grown:
            assert after[name] <= max_rank
        if name in plan.pruned:
            if name in plan.grown:  # a pruner receives only when no non-pruner had room
                assert plan.recycled > 0
            kept = plan.resizes[name].keep
            dropped = set(range(len(values))) - set(kept)
            assert all(values[i] < threshold for i in dropped)


def test_unplaced_only_when_every_receiver_is_full():
    gates = {"a": [0.0, 0.0, 0.9], "b": [0.8, 0.7], "c": [0.6, 0.5]}
    plan = prune_and_redistribute(gates, 1e-6, max_rank=3)
    assert plan.pruned == {"a": 2} and plan.grown == {"b": 1, "c": 1} and plan.unplaced == 0
    plan = prune_and_redistribute(gates, 1e-6, max_rank=2)  # b and c full: a takes one back, fresh; then all are full
    assert plan.recycled == 1 and plan.unplaced == 1 and plan.grown == {"a": 1}
    plan = prune_and_redistribute({"a": [0.0, 0.0, 0.9], "b": [0.8, 0.7, 0.1]}, 1e-6, max_rank=3)
    assert plan.unplaced == 0 and plan.recycled == 2
    plan = prune_and_redistribute({"a": [0.0, 0.9], "b": [0.8]}, 1e-6, max_rank=1)
    assert plan.unplaced == 1 and plan.grown == {}


def test_when_every_module_pruned_ranks_are_recycled_not_lost():
    plan = prune_and_redistribute({"a": [0.0, 0.0, 0.5], "b": [0.0, 0.9], "c": [0.0, 0.0]}, 1e-6)
    assert plan.pruned == {"a": 2, "b": 1, "c": 1}  # c keeps min_rank 1
    assert plan.unplaced == 0 and plan.recycled == 4
    after = {n: len(r.keep) + r.grow for n, r in plan.resizes.items()}
    assert sum(after.values()) == 7


def test_round_robin_by_smallest_gate_largest_first():
    gates = {"p": [0.0, 0.0, 0.0, 0.0, 0.5], "weak": [0.2, 0.9], "strong": [0.8, 0.95], "mid": [0.5, 0.6]}
    plan = prune_and_redistribute(gates, 1e-6)
    # 4 freed: strong, mid, weak, strong
    assert plan.grown == {"strong": 2, "mid": 1, "weak": 1}
    assert plan.resizes["p"].keep == (4,)


def test_strongest_fills_receivers_in_order_and_none_only_prunes():
    gates = {"p": [0.0, 0.0, 0.0, 0.0, 0.5], "weak": [0.2, 0.9], "strong": [0.8, 0.95], "mid": [0.5, 0.6]}
    assert prune_and_redistribute(gates, 1e-6, reassign="strongest").grown == {"strong": 4}
    capped = prune_and_redistribute(gates, 1e-6, max_rank=4, reassign="strongest")
    assert capped.grown == {"strong": 2, "mid": 2} and capped.unplaced == 0
    pruned = prune_and_redistribute(gates, 1e-6, reassign="none")
    assert pruned.grown == {} and pruned.pruned == {"p": 4} and pruned.unplaced == 0 and pruned.recycled == 0
    assert pruned.resizes == {"p": prune_and_redistribute(gates, 1e-6).resizes["p"]}  # the same cut
    with pytest.raises(ValueError, match="'most'.*spread, strongest, need, none"):
        prune_and_redistribute(gates, 1e-6, reassign="most")


def test_need_deals_freed_ranks_in_proportion_to_need_per_rank_held():
    gates = {"p": [0.0, 0.0, 0.0, 0.0, 0.0, 0.5], "weak": [0.2, 0.9], "strong": [0.8, 0.95], "mid": [0.5, 0.6]}
    need = {"p": 0.0, "weak": 0.6, "strong": 0.1, "mid": 0.35}
    # 5 freed; D'Hondt from 2 ranks each: weak 0.6/3, weak 0.6/4, weak 0.6/5, mid 0.35/3, weak 0.6/6
    plan = prune_and_redistribute(gates, 1e-6, reassign="need", need=need)
    assert plan.grown == {"weak": 4, "mid": 1} and plan.pruned == {"p": 5}
    # the gates' order plays no part: only need does (the same plan whatever the receivers' weakest gates)
    flipped = {**gates, "weak": [0.8, 0.95], "strong": [0.2, 0.9]}
    assert prune_and_redistribute(flipped, 1e-6, reassign="need", need=need).grown == plan.grown
    # in parameters: a rank of "weak" costs 3, so its need per unit of cost is a third; mid 0.3/3, mid 0.3/4,
    # then weak 0.6/9 and the 5 freed are spent
    costed = prune_and_redistribute(gates, 1e-6, costs={"p": 1, "weak": 3, "strong": 1, "mid": 1},
                                    reassign="need", need={**need, "mid": 0.3})
    assert costed.grown == {"mid": 2, "weak": 1} and costed.unplaced == 0
    with pytest.raises(ValueError, match="need score for every module"):
        prune_and_redistribute(gates, 1e-6, reassign="need", need={"weak": 1.0})


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([f"m{i}" for i in range(12)]), gate_lists, min_size=1),
       st.sampled_from([1e-6, 0.3]), st.one_of(st.none(), st.integers(8, 10)))
def test_every_reassign_rule_moves_the_same_total(gates, threshold, max_rank):
    need = {n: float(len(v)) for n, v in gates.items()}
    plans = {rule: prune_and_redistribute(gates, threshold, 1, max_rank, reassign=rule, need=need)
             for rule in ("spread", "strongest", "need")}
    for rule in ("strongest", "need"):
        assert plans["spread"].pruned == plans[rule].pruned
        assert plans["spread"].moved + plans["spread"].recycled == plans[rule].moved + plans[rule].recycled


def test_min_rank_keeps_the_strongest():
    plan = prune_and_redistribute({"a": [0.0, 0.0, 0.0], "b": [1.0]}, 1e-6, min_rank=1)
    assert plan.resizes["a"].keep == (0,) and plan.pruned == {"a": 2} and plan.grown == {"b": 2}


def test_deterministic_and_nothing_to_do():
    rnd = random.Random(0)
    gates = {f"m{i}": [rnd.choice([0.0, rnd.random()]) for _ in range(4)] for i in range(10)}
    assert prune_and_redistribute(gates, 1e-6) == prune_and_redistribute(dict(gates), 1e-6)
    assert prune_and_redistribute({"a": [0.5, 0.4], "b": [1.0]}, 1e-6).resizes == {}


def test_even_ranks():
    assert even_ranks(["a", "b", "c"], 8) == {"a": 3, "b": 3, "c": 2}
    with pytest.raises(ValueError):
        even_ranks(["a", "b", "c"], 2)


from dynlora.decide.allocate import hold_receivers, limit_moves, proportional_targets  # noqa: E402


@settings(max_examples=400, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=100.0, allow_nan=False), min_size=1, max_size=40),
       st.integers(0, 3), st.one_of(st.none(), st.integers(4, 24)), st.integers(0, 10_000))
def test_proportional_targets_sum_to_budget_within_bounds(scores, min_rank, max_rank, seed):
    names = {f"m{i}": s for i, s in enumerate(scores)}
    cap = max_rank if max_rank is not None else 10**6
    lo, hi = len(names) * min_rank, len(names) * min(cap, 30)
    budget = lo + (seed % (hi - lo + 1))
    targets = proportional_targets(names, budget, min_rank, max_rank)
    assert sum(targets.values()) == budget
    assert all(min_rank <= t <= cap for t in targets.values())
    ranked = sorted(names, key=lambda k: -names[k])
    for a, b in zip(ranked, ranked[1:]):  # more important never gets less, up to one rank of rounding
        if names[a] > names[b]:
            assert targets[a] + 1 >= targets[b] or targets[a] == cap or targets[b] == min_rank


def test_proportional_targets_examples():
    assert proportional_targets({"a": 3.0, "b": 1.0}, 8) == {"a": 6, "b": 2}
    assert proportional_targets({"a": 1.0, "b": 1.0, "c": 1.0}, 10) == {"a": 4, "b": 3, "c": 3}
    assert proportional_targets({"a": 100.0, "b": 1.0, "c": 1.0}, 12, min_rank=2, max_rank=6) == {"a": 6, "b": 3, "c": 3}
    with pytest.raises(ValueError):
        proportional_targets({"a": 1.0, "b": 1.0}, 3, min_rank=2)


def test_scores_equal_up_to_noise_keep_an_even_split():
    # exact shares 1.98-2.02 ranks: largest-remainder rounding keeps every module at 2 (rounding by importance
    # gave the modules under 2.0 one rank and the strongest three)
    scores = {f"m{i}": 1.0 + 0.01 * ((-1) ** i) * (i % 3) for i in range(12)}
    assert proportional_targets(scores, 24) == {name: 2 for name in scores}
    costs = {name: 768 if i % 2 else 1920 for i, name in enumerate(scores)}  # in parameters: the same
    even = {name: 2 for name in scores}
    assert proportional_targets({n: v * costs[n] for n, v in scores.items()}, sum(2 * c for c in costs.values()),
                                costs=costs) == even


def test_limit_moves_keeps_the_total_and_the_cap():
    current = {"a": 4, "b": 4, "c": 4}
    targets = {"a": 8, "b": 2, "c": 2}
    assert limit_moves(current, targets, None) == targets
    limited = limit_moves(current, targets, 2)
    assert sum(limited.values()) == 12 and limited["a"] == 6
    assert sum(max(0, limited[k] - current[k]) for k in current) == 2


def test_a_module_not_ready_receives_nothing_and_its_share_goes_back_to_the_givers():
    current = {"a": 2, "b": 2, "c": 2, "d": 2}
    assert hold_receivers(current, {"a": 5, "b": 1, "c": 1, "d": 1}, {"a": False}) == current  # nobody else takes
    # a held at 2; what it would have taken goes back to the givers cut furthest first (d, then c)
    held = hold_receivers(current, {"a": 4, "b": 3, "c": 1, "d": 0}, {"a": False, "b": True})
    assert held == {"a": 2, "b": 3, "c": 2, "d": 1}
    assert hold_receivers(current, {"a": 4, "b": 3, "c": 1, "d": 0}, {}) == {"a": 4, "b": 3, "c": 1, "d": 0}
