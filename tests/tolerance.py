"""How far apart two *different* computations of the same float values may be, and why.

Float addition is not associative: a sum taken in another order (split over two processes, blocked by
another kernel, accumulated over micro-batches, a weight merged into the base instead of added beside it)
rounds differently. For a sum of n terms each order's error is at most about n·u·Σ|terms|, u = eps/2 the
unit roundoff (Higham, *Accuracy and Stability of Numerical Algorithms*, §4.2), so two orders differ by at
most n·eps of the values' size. A value computed through a network carries the roundings of every reduction
on its way; a training run repeats it at every optimizer step, and Adam divides by √v, so a gradient's
relative error becomes the update's: over ``steps`` steps the bound adds up.

``terms`` counts the longest chain of roundings behind one value (``chain_terms`` for a transformer). In
bf16 the kernels accumulate each reduction in float32 and round to bf16 once per operation, so there
``terms`` counts the bf16 operations on the way, at bf16's eps. The bound is a worst case of rounding
alone: a real defect (a gradient averaged wrongly, a micro-batch dropped, a rank misplaced, an adapter left
out of an export) moves values by a fraction of their size, far above it. Where the computation is the
same, tests assert bit identity instead.
"""

from __future__ import annotations

import torch


def chain_terms(layers: int, hidden: int, intermediate: int, seq: int, batch_tokens: int = 0) -> int:
    """``terms`` for a float32 value computed through ``layers`` transformer layers of width ``hidden``: each
    reduces over hidden (query / key / value, the scores, the output projection, the feed-forward's first
    matrix), the ``seq`` positions attended to, and ``intermediate`` (the feed-forward's second matrix); a head
    over hidden at the end. A gradient sums the ``batch_tokens`` of its batch on top."""
    return batch_tokens + layers * (4 * hidden + intermediate + seq) + hidden


def rounding_bound(reference: torch.Tensor, terms: int, steps: int = 1, dtype: torch.dtype | None = None) -> float:
    """The largest |a - b| that rounding alone explains for two orders of a computation of ``reference``:
    ``terms`` roundings per value, ``steps`` such computations in a row, at ``dtype``'s eps (default: the
    reference's dtype), relative to the largest |value| of ``reference``."""
    eps = torch.finfo(dtype or reference.dtype).eps
    return terms * steps * eps * float(reference.detach().abs().max())


def assert_within_rounding(actual: torch.Tensor, expected: torch.Tensor, terms: int, steps: int = 1,
                           dtype: torch.dtype | None = None, name: str = "") -> None:
    """``actual`` equals ``expected`` up to ``rounding_bound``; the message names the value and both sizes."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    bound = rounding_bound(expected.float(), terms, steps, dtype or expected.dtype)
    diff = float((actual.float() - expected.float()).abs().max()) if expected.numel() else 0.0
    assert diff <= bound, f"{name}: differs by {diff:.3g}, rounding explains {bound:.3g} ({terms} terms x {steps})"
