"""Each selection strategy's defining property."""

import itertools

import pytest
import torch

from dynlora.decide.select import discounted, multinomial, resolve_k, select, topk, topp, uniform

SCORES = {"a": 0.05, "b": 0.4, "c": 0.1, "d": 0.3, "e": 0.15}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_topk_returns_the_k_largest():
    assert set(topk(SCORES, 2)) == {"b", "d"}
    assert set(topk(SCORES, 3)) == {"b", "d", "e"}
    assert topk(SCORES, 2) == ("b", "d")  # in the scores' order


def test_topp_is_the_minimal_set_reaching_t():
    for t in (0.1, 0.4, 0.5, 0.7, 0.71, 0.85, 0.95, 1.0):
        chosen = topp(SCORES, t)
        assert sum(SCORES[n] for n in chosen) >= t - 1e-9
        smaller = [c for r in range(len(chosen)) for c in itertools.combinations(SCORES, r)]
        assert all(sum(SCORES[n] for n in c) < t - 1e-9 for c in smaller)  # no smaller set reaches T


def test_multinomial_never_repeats_and_follows_the_weights():
    counts = {n: 0 for n in SCORES}
    g = gen(1)
    draws = 4000
    for _ in range(draws):
        chosen = multinomial(SCORES, 1, g)
        assert len(chosen) == 1
        counts[chosen[0]] += 1
    for name, score in SCORES.items():
        assert abs(counts[name] / draws - score) < 0.03  # fixed seed, tolerance ~4 sigma
    for _ in range(200):
        chosen = multinomial(SCORES, 3, g)
        assert len(set(chosen)) == 3


def test_discounted_spreads_selections_more_evenly_than_multinomial():
    def spread(pick) -> float:
        counts = {n: 0 for n in SCORES}
        g = gen(2)
        for _ in range(300):
            for n in pick(counts, g):
                counts[n] += 1
        return float(torch.tensor(list(counts.values()), dtype=torch.float).std())

    plain = spread(lambda counts, g: multinomial(SCORES, 2, g))
    spread_out = spread(lambda counts, g: discounted(SCORES, 2, counts, g))
    assert spread_out < 0.8 * plain  # measured 0.61 with these seeds


def test_uniform_ignores_the_scores():
    flipped = {n: 1.0 - s for n, s in SCORES.items()}
    assert [uniform(SCORES, 2, gen(s)) for s in range(20)] == [uniform(flipped, 2, gen(s)) for s in range(20)]
    counts = {n: 0 for n in SCORES}
    g = gen(3)
    for _ in range(2000):
        for n in uniform(SCORES, 2, g):
            counts[n] += 1
    assert max(counts.values()) - min(counts.values()) < 120  # 800 expected each


def test_same_seed_same_choice_and_k_forms():
    for strategy in ("multinomial", "discounted", "uniform"):
        assert select(strategy, SCORES, k=2, generator=gen(5)) == select(strategy, SCORES, k=2, generator=gen(5))
    assert resolve_k(0.5, 37) == 18 and resolve_k(3, 37) == 3 and resolve_k(0.01, 10) == 1
    with pytest.raises(ValueError):
        resolve_k(2.5, 10)
    with pytest.raises(ValueError):
        select("magic", SCORES)


def test_zero_scores_still_give_k_modules():
    scores = {"a": 0.0, "b": 1.0, "c": 0.0}
    assert len(multinomial(scores, 2, gen())) == 2
    assert topp({"a": 0.0, "b": 0.0}, 0.5) == ("a",)


@pytest.mark.parametrize("strategy", ["topk", "multinomial", "discounted", "uniform"])
def test_with_costs_k_is_a_share_of_the_cost_and_is_never_exceeded(strategy):
    rnd = torch.Generator().manual_seed(3)
    scores = {f"m{i}": float(torch.rand(1, generator=rnd)) for i in range(12)}
    costs = {name: (1920 if i % 3 == 0 else 768) for i, name in enumerate(scores)}  # FFN-wide and attention
    for share in (0.25, 0.5, 0.75):
        chosen = select(strategy, scores, k=share, costs=costs, generator=torch.Generator().manual_seed(0))
        spent = sum(costs[n] for n in chosen)
        assert spent <= share * sum(costs.values())
        assert spent > share * sum(costs.values()) - max(costs.values())  # nothing left out that still fitted
        assert chosen == tuple(n for n in scores if n in chosen)  # in the scores' order
    again = select(strategy, scores, k=0.5, costs=costs, generator=torch.Generator().manual_seed(0))
    assert again == select(strategy, scores, k=0.5, costs=costs, generator=torch.Generator().manual_seed(0))


def test_with_costs_topk_prefers_the_best_that_fit_and_a_count_is_a_share():
    scores = {"wide": 0.9, "a": 0.5, "b": 0.4, "c": 0.1}
    costs = {"wide": 4.0, "a": 1.0, "b": 1.0, "c": 1.0}
    assert select("topk", scores, k=0.5, costs=costs) == ("a", "b", "c")  # the wide one does not fit: 3.5 of 7
    assert select("topk", scores, k=0.6, costs=costs) == ("wide",)  # 4.2 of 7: the best one fits, then no other
    assert select("topk", scores, k=2, costs={n: 1.0 for n in scores}) == select("topk", scores, k=2)
    assert select("topk", {"x": 1.0, "y": 0.5}, k=0.1, costs={"x": 5.0, "y": 5.0}) == ("x",)  # the first trains
