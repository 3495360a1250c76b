"""Re-factorising an adapter into its singular directions keeps its product and orders its ranks."""

import torch

from dynlora.core.refactor import singular_factors, singular_values
from tests.tolerance import assert_within_rounding


def _factors(r: int = 4, fan_in: int = 24, out: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, fan_in, generator=g) * 0.2, torch.randn(out, r, generator=g) * 0.05


def test_the_product_stays_and_ranks_come_strongest_first():
    a, b = _factors()
    new_a, new_b = singular_factors(a, b)
    # QR, a small SVD and two products in float32 against B A: a few roundings of the product's size
    assert_within_rounding(new_b @ new_a, b @ a, terms=40)
    norms = new_b.norm(dim=0)
    assert torch.all(norms[:-1] >= norms[1:])  # B' carries the singular values, largest first
    assert torch.allclose(norms, torch.linalg.svdvals(b @ a)[:4] / (a.norm() / 2), rtol=1e-4)
    gram = new_a @ new_a.T  # A' rows orthogonal, each at A's mean row norm (A's scale, as LoRA keeps it)
    assert torch.allclose(gram, torch.eye(4) * a.norm() ** 2 / 4, atol=1e-5)


def test_a_direction_spread_over_every_rank_ends_in_the_first():
    u, v = torch.randn(16, 1), torch.randn(1, 24)
    mix = torch.tensor([[0.6, 0.4, -0.3]])  # three ranks, each holding part of one rank-1 update
    a = torch.cat([v, torch.zeros(2, 24)]) + torch.randn(3, 24) * 1e-3
    b = u @ mix
    new_a, new_b = singular_factors(a, b)
    assert new_b[:, 0].norm() > 1e3 * new_b[:, 1:].norm()  # dropping the last two loses (almost) nothing
    dropped = new_b[:, :1] @ new_a[:1]
    assert (dropped - b @ a).norm() < 1e-3 * (b @ a).norm()


def test_no_factors_when_the_product_has_fewer_directions_than_ranks():
    a, b = _factors(r=6, fan_in=4, out=16)
    assert singular_factors(a, b) is None
    assert singular_factors(torch.zeros(0, 8), torch.zeros(8, 0)) is None


def test_a_zero_a_keeps_a_finite_scale():
    new_a, new_b = singular_factors(torch.zeros(2, 9), torch.randn(5, 2))
    assert torch.isfinite(new_a).all() and torch.count_nonzero(new_b) == 0


def test_singular_values_are_the_product_s():
    a, b = _factors()
    assert torch.allclose(singular_values(a, b), torch.linalg.svdvals(b @ a)[:4], rtol=1e-4, atol=1e-7)
    a, b = _factors(r=6, fan_in=4, out=16)  # more ranks than directions: the product's 4
    assert torch.allclose(singular_values(a, b), torch.linalg.svdvals(b @ a)[:4], rtol=1e-4, atol=1e-7)
    u = torch.randn(16, 1)
    assert singular_values(torch.randn(3, 24), u @ torch.tensor([[1.0, -2.0, 0.5]]))[1:].abs().max() < 1e-5
    assert singular_values(torch.zeros(0, 8), torch.zeros(8, 0)).numel() == 0
