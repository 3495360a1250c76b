"""How far apart two *different* computations of the same float values may be, and why.

Float addition is not associative: a sum taken in another order (split over two processes, blocked by
another kernel, accumulated over micro-batches) rounds differently. For a sum of n terms each order's
error is at most about n·u·Σ|terms|, u = eps/2 the unit roundoff (Higham, *Accuracy and Stability of
Numerical Algorithms*, §4.2), so two orders differ by at most n·eps of the values' size. A training run
repeats it: every optimizer step carries its gradient's rounding into the parameters, and Adam divides
by √v, so a gradient's relative error becomes the update's. Over ``steps`` steps the bound adds up.

``terms`` counts the longest chain of additions behind one value: for an adapter's gradient, the tokens of
a global batch plus, for each layer the gradient flows back through, that layer's reductions (hidden
and feed-forward widths). The bound is a worst case of rounding alone: a real defect (a gradient
averaged wrongly, a micro-batch dropped, a rank misplaced) moves values by a fraction of their size,
orders of magnitude above it. Where the computation is the same, tests assert bit identity instead.
"""

from __future__ import annotations

import torch


def rounding_bound(reference: torch.Tensor, terms: int, steps: int = 1, dtype: torch.dtype | None = None) -> float:
    """The largest |a - b| that rounding alone explains for two orders of a computation of ``reference``:
    ``terms`` additions per value, ``steps`` such computations in a row, in ``dtype`` (default: the reference's),
    relative to the largest |value| of ``reference``."""
    eps = torch.finfo(dtype or reference.dtype).eps
    return terms * steps * eps * float(reference.detach().abs().max())


def backprop_terms(tokens: int, layers: int, hidden: int, intermediate: int) -> int:
    """``terms`` for an adapter gradient of a transformer: the ``tokens`` of a global batch summed, after the
    gradient came back through ``layers`` layers, each reducing over attention (hidden), feed-forward
    (intermediate, then hidden) widths."""
    return tokens + layers * (2 * hidden + intermediate)


def assert_within_rounding(actual: torch.Tensor, expected: torch.Tensor, terms: int, steps: int = 1,
                           dtype: torch.dtype | None = None, name: str = "") -> None:
    """``actual`` equals ``expected`` up to ``rounding_bound``; the message names the value and both sizes."""
    bound = rounding_bound(expected.float(), terms, steps, dtype or expected.dtype)
    diff = float((actual.float() - expected.float()).abs().max()) if expected.numel() else 0.0
    assert diff <= bound, f"{name}: differs by {diff:.3g}, rounding explains {bound:.3g} ({terms} terms x {steps})"
