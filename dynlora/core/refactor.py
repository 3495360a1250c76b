"""Re-factorise an adapter into its singular directions: the same product, strongest direction first.

LoRA spreads what it learns over all of a module's ranks: ``B A`` is a sum of r outer products, none of
them a direction of its own. Taking one rank away then takes a share of everything the module learned.
Written as ``B' A'`` with ``B' A' = B A`` and the ranks ordered by singular value, the last ranks hold the
directions that matter least, and a method that drops ranks from the end loses the least it can.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def singular_factors(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(A', B')`` with ``B' A' = B A`` (to float32 rounding), rank i the i-th singular direction.

    ``a``: (r, in), ``b``: (out, r) with any per-rank multipliers already in it. A' has orthogonal rows, all
    of A's mean row norm (so that A' sits at A's scale, as LoRA's A does, and B' carries the singular
    values); B' columns are ordered by singular value, largest first. In float32 whatever the inputs'
    dtype. None when r exceeds in or out (the product has fewer directions than ranks).
    """
    r, fan_in = a.shape
    if r == 0 or r > min(fan_in, b.shape[0]):
        return None
    a32, b32 = a.detach().float(), b.detach().float()
    qb, rb = torch.linalg.qr(b32)  # (out, r), (r, r)
    qa, ra = torch.linalg.qr(a32.T)  # (in, r), (r, r)
    u, s, vh = torch.linalg.svd(rb @ ra.T)  # (r, r), (r,), (r, r): B A = qb u diag(s) vh qa^T
    row = float(a32.norm()) / math.sqrt(r)
    if row == 0.0:
        row = 1.0 / math.sqrt(fan_in)
    new_a = (vh @ qa.T) * row  # (r, in)
    new_b = (qb @ u) * (s / row)  # (out, r)
    return new_a, new_b


@torch.no_grad()
def singular_values(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(r,) float32 singular values of ``B A``, largest first (``a``: (r, in), ``b``: (out, r)); as many as the
    product can have (min(r, in, out)). Cheap at LoRA's ranks: two thin QRs and an r x r SVD."""
    r, fan_in = a.shape
    k = min(r, fan_in, b.shape[0])
    if k == 0:
        return torch.zeros(0)
    a32, b32 = a.detach().float(), b.detach().float()
    if r > k:  # more ranks than the product has directions: the r x r core would not be square-factorised
        return torch.linalg.svdvals(b32 @ a32)[:k]
    rb = torch.linalg.qr(b32, mode="r")[1]  # (r, r)
    ra = torch.linalg.qr(a32.T, mode="r")[1]  # (r, r)
    return torch.linalg.svdvals(rb @ ra.T)
