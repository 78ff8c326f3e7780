"""Matrix-free linear algebra helpers against dense closed forms."""

from __future__ import annotations

import torch

from operators.linalg import largest_eigenvalue
from operators.random import make_generator


def test_largest_eigenvalue_matches_the_dense_spectrum() -> None:
    gen = make_generator(0)
    A = torch.randn(5, 12, generator=gen, dtype=torch.float64)
    exact = float(torch.linalg.eigvalsh(A.T @ A)[-1])

    def normal(v: torch.Tensor) -> torch.Tensor:
        return v @ A.T @ A

    like = torch.empty(1, 12, dtype=torch.float64)
    value = largest_eigenvalue(normal, like, iters=200)
    assert abs(value - exact) < 1e-8 * exact
    assert largest_eigenvalue(normal, like, iters=200) == value  # fixed start: deterministic
    # Power iteration approaches from below.
    assert largest_eigenvalue(normal, like, iters=2) <= exact * (1 + 1e-12)
