"""Module selectors: pure functions from importance scores to the set of adapters that train.

Each takes the scores (name -> non-negative float), a size (k) or a threshold (T), and where it draws
at random an explicit ``torch.Generator``; it returns the chosen names in the scores' order. Nothing
here sees a step, the model or the optimizer, so every process of a distributed run that holds the
same scores and the same generator state chooses the same set.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def resolve_k(k: float, n: int) -> int:
    """``k`` as a count (>= 1, whole) or a fraction of ``n`` (0 < k < 1, rounded, at least 1)."""
    if not k > 0:
        raise ValueError(f"k must be > 0, got {k}")
    if k < 1:
        return max(1, min(n, round(k * n)))
    if k != int(k):
        raise ValueError(f"k must be a whole count or a fraction below 1, got {k}")
    return min(n, int(k))


def _ordered(scores: Mapping[str, float], chosen: set[str]) -> tuple[str, ...]:
    return tuple(name for name in scores if name in chosen)


def _ranked(scores: Mapping[str, float]) -> list[str]:
    """Names from the highest score down, ties broken by order."""
    names = list(scores)
    return [names[i] for i in sorted(range(len(names)), key=lambda i: (-scores[names[i]], i))]


def topk(scores: Mapping[str, float], k: int) -> tuple[str, ...]:
    """The ``k`` highest scores (ties broken by order)."""
    return _ordered(scores, set(_ranked(scores)[:k]))


def topp(scores: Mapping[str, float], threshold: float) -> tuple[str, ...]:
    """The smallest set whose normalised cumulative score reaches ``threshold`` (0 < T <= 1).

    Taking the highest scores first gives the fewest modules; ties are broken by order.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    total = sum(scores.values())
    ranked = _ranked(scores)
    if total <= 0:
        return _ordered(scores, set(ranked[: max(1, round(threshold * len(ranked)))]))
    chosen: set[str] = set()
    cumulative = 0.0
    for name in ranked:
        chosen.add(name)
        cumulative += scores[name] / total
        if cumulative >= threshold - 1e-12:
            break
    return _ordered(scores, chosen)


def _draw(weights: torch.Tensor, k: int, generator: torch.Generator) -> list[int]:
    """k indices without replacement, probability proportional to ``weights``; zero weights come last."""
    positive = int((weights > 0).sum())
    if positive >= k:
        return torch.multinomial(weights, k, replacement=False, generator=generator).tolist()
    first = torch.nonzero(weights > 0).flatten().tolist()
    rest = torch.nonzero(weights <= 0).flatten()
    order = rest[torch.randperm(len(rest), generator=generator)].tolist()
    return first + order[: k - len(first)]


def multinomial(scores: Mapping[str, float], k: int, generator: torch.Generator) -> tuple[str, ...]:
    """``k`` modules drawn without replacement with probability proportional to their score."""
    names = list(scores)
    weights = torch.tensor([max(0.0, float(scores[n])) for n in names], dtype=torch.float64)
    return _ordered(scores, {names[i] for i in _draw(weights, k, generator)})


def discounted(scores: Mapping[str, float], k: int, counts: Mapping[str, int],
               generator: torch.Generator) -> tuple[str, ...]:
    """Multinomial on ``w_i = s_i / (1 + n_i)``, ``n_i`` the times module i was already selected.

    Modules that trained often lose weight, so choices spread over the modules (exploration).
    """
    discounted_scores = {n: float(s) / (1 + counts.get(n, 0)) for n, s in scores.items()}
    return multinomial(discounted_scores, k, generator)


def uniform(scores: Mapping[str, float], k: int, generator: torch.Generator) -> tuple[str, ...]:
    """``k`` modules at random; the scores are ignored (only their names are used)."""
    names = list(scores)
    picked = torch.randperm(len(names), generator=generator)[:k].tolist()
    return _ordered(scores, {names[i] for i in picked})


STRATEGIES: tuple[str, ...] = ("topk", "topp", "multinomial", "discounted", "uniform")


def _priority(strategy: str, scores: Mapping[str, float], counts: Mapping[str, int],
              generator: torch.Generator) -> list[str]:
    """Every module, in the order the strategy would pick them."""
    names = list(scores)
    if strategy == "topk":
        return _ranked(scores)
    if strategy in ("multinomial", "discounted"):
        seen = counts if strategy == "discounted" else {}
        weights = torch.tensor([max(0.0, float(scores[n])) / (1 + seen.get(n, 0)) for n in names], dtype=torch.float64)
        return [names[i] for i in _draw(weights, len(names), generator)]
    if strategy == "uniform":
        return [names[i] for i in torch.randperm(len(names), generator=generator).tolist()]
    raise ValueError(f"strategy {strategy!r} has no cost-bounded form; valid: topk, multinomial, discounted, uniform")


def within_cost(order: list[str], costs: Mapping[str, float], share: float) -> set[str]:
    """Modules in ``order`` while their costs sum to at most ``share`` of all costs; one that does not fit is
    passed over for cheaper ones after it. When none fits, the first trains."""
    budget = share * sum(costs[n] for n in order)
    chosen: set[str] = set()
    spent = 0.0
    for name in order:
        if spent + costs[name] <= budget:
            chosen.add(name)
            spent += costs[name]
    return chosen or set(order[:1])


def select(strategy: str, scores: Mapping[str, float], *, k: float = 0.5, threshold: float = 0.5,
           counts: Mapping[str, int] | None = None, generator: torch.Generator | None = None,
           costs: Mapping[str, float] | None = None) -> tuple[str, ...]:
    """Dispatch by strategy name; ``k`` is a count or a fraction, ``threshold`` is for ``topp``.

    ``costs`` (what each module costs to train, in any unit): ``k`` is then the share of the total cost
    that trains (a count k >= 1 as the share k / modules), taken in the strategy's order.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    if costs is not None and strategy != "topp":
        share = k if k < 1 else resolve_k(k, len(scores)) / len(scores)
        return _ordered(scores, within_cost(_priority(strategy, scores, counts or {}, generator), costs, share))
    n = resolve_k(k, len(scores)) if strategy != "topp" else 0
    if strategy == "topk":
        return topk(scores, n)
    if strategy == "topp":
        return topp(scores, threshold)
    if strategy == "multinomial":
        return multinomial(scores, n, generator)
    if strategy == "discounted":
        return discounted(scores, n, counts or {}, generator)
    if strategy == "uniform":
        return uniform(scores, n, generator)
    raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
