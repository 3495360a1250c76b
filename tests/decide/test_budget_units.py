"""Allocators under a budget in parameters or FLOPs: what the ranks cost never exceeds the budget, and falls
short of it by less than one rank of the costliest module (unless every module is full); deterministic."""

from hypothesis import given, settings
from hypothesis import strategies as st

from dynlora.decide.allocate import fit_to_budget, hold_receivers, limit_moves, proportional_targets, prune_and_redistribute

NAMES = [f"m{i}" for i in range(8)]
# one rank of a 384->384 attention module costs 768 parameters, of a 384->1536 FFN module 1,920
costs_of = st.dictionaries(st.sampled_from(NAMES), st.sampled_from([768, 769, 1920, 1921, 3072]), min_size=1)


def _cost(ranks, costs):
    return sum(r * costs[n] for n, r in ranks.items())


@settings(max_examples=300, deadline=None)
@given(costs_of, st.data())
def test_prune_and_redistribute_spends_the_budget_within_one_rank(costs, data):
    gates = {n: data.draw(st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=8)) for n in costs}
    budget = _cost({n: len(v) for n, v in gates.items()}, costs) + data.draw(st.integers(0, 2000))
    plan = prune_and_redistribute(gates, 0.3, min_rank=1, costs=costs, budget=budget)
    after = {n: len(v) for n, v in gates.items()}
    for name, resize in plan.resizes.items():
        after[name] = len(resize.keep) + resize.grow
    spent = _cost(after, costs)
    assert spent <= budget
    assert budget - spent < max(costs.values())  # no max_rank: someone could always take one more
    assert plan.unplaced == 0
    assert prune_and_redistribute(gates, 0.3, min_rank=1, costs=costs, budget=budget) == plan


def test_prune_and_redistribute_in_ranks_is_unchanged_by_unit_costs():
    gates = {"a": [0.0, 0.9, 0.0], "b": [0.8, 0.7], "c": [0.6, 0.0]}
    plain = prune_and_redistribute(gates, 1e-6)
    assert prune_and_redistribute(gates, 1e-6, costs={n: 1 for n in gates}, budget=7) == plain
    assert sum(plain.grown.values()) == 3


def test_a_freed_wide_rank_buys_several_narrow_ones():
    gates = {"ffn": [0.0, 0.9], "q": [0.9], "v": [0.8]}
    plan = prune_and_redistribute(gates, 1e-6, costs={"ffn": 1920, "q": 768, "v": 768}, budget=2 * 1920 + 2 * 768)
    assert plan.pruned == {"ffn": 1} and plan.grown == {"q": 1, "v": 1}  # 1,920 freed: two 768-ranks, 384 left


@settings(max_examples=300, deadline=None)
@given(costs_of, st.data())
def test_proportional_targets_spend_the_budget_within_one_rank(costs, data):
    scores = {n: data.draw(st.floats(0.0, 10.0, allow_nan=False)) for n in costs}
    max_rank = data.draw(st.one_of(st.none(), st.integers(2, 16)))
    floor = _cost({n: 1 for n in costs}, costs)
    budget = data.draw(st.integers(floor, floor * 10))
    targets = proportional_targets(scores, budget, 1, max_rank, costs=costs)
    spent = _cost(targets, costs)
    assert spent <= budget and all(1 <= r <= (max_rank or budget) for r in targets.values())
    open_ = [n for n in costs if max_rank is None or targets[n] < max_rank]
    if open_:  # what is left cannot pay for one more rank of any module with room
        assert budget - spent < min(costs[n] for n in open_)
    assert proportional_targets(scores, budget, 1, max_rank, costs=costs) == targets


def test_equal_scores_give_the_narrow_modules_more_ranks_for_the_same_share():
    targets = proportional_targets({"ffn": 1.0, "q": 1.0}, 2 * 1920 * 4, costs={"ffn": 1920, "q": 768})
    assert targets["q"] * 768 <= targets["ffn"] * 1920 + 768 and targets["q"] > targets["ffn"]


@settings(max_examples=200, deadline=None)
@given(costs_of, st.data())
def test_limit_moves_with_costs_never_exceeds_the_budget(costs, data):
    current = {n: data.draw(st.integers(1, 8)) for n in costs}
    budget = _cost(current, costs) + data.draw(st.integers(0, 1000))
    scores = {n: data.draw(st.floats(0.0, 1.0, allow_nan=False)) for n in costs}
    targets = proportional_targets(scores, budget, 1, costs=costs)
    moves = data.draw(st.integers(1, 6))
    result = limit_moves(current, targets, moves, priority=scores, costs=costs, budget=budget)
    assert _cost(result, costs) <= budget
    assert sum(max(0, current[n] - result[n]) for n in costs) <= moves  # at most max_moves ranks taken
    assert all(min(current[n], targets[n]) <= result[n] <= max(current[n], targets[n]) for n in costs)
    ready = {n: data.draw(st.booleans()) for n in costs}
    kept = hold_receivers(current, targets, ready, priority=scores, costs=costs, budget=budget)
    assert _cost(kept, costs) <= budget and all(kept[n] <= current[n] for n in costs if not ready[n])
    assert all(min(current[n], targets[n]) <= kept[n] for n in costs)  # a giver gives at most what it planned


@settings(max_examples=200, deadline=None)
@given(costs_of, st.data())
def test_fit_to_budget_removes_ranks_until_they_fit(costs, data):
    ranks = {n: data.draw(st.integers(1, 8)) for n in costs}
    budget = data.draw(st.integers(_cost({n: 1 for n in costs}, costs), _cost(ranks, costs)))
    fitted = fit_to_budget(ranks, costs, budget)
    assert _cost(fitted, costs) <= budget and all(1 <= fitted[n] <= ranks[n] for n in costs)
    assert budget - _cost(fitted, costs) < max(costs.values()) or fitted == ranks
    assert fit_to_budget(ranks, costs, _cost(ranks, costs)) == ranks  # nothing to do
