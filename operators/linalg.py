"""Matrix-free linear algebra for linear operators: batched conjugate gradients.

Batch items are independent systems: inner products and step sizes are per sample, and a
sample stops updating once its own residual is below tolerance (Hestenes & Stiefel, 1952).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product, shape (B, 1, ..., 1) for broadcasting."""
    return (a * b).flatten(1).sum(dim=1).view(-1, *([1] * (a.dim() - 1)))


def cg(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    x0: torch.Tensor | None = None,
    tol: float = 1e-6,
    max_iter: int = 200,
) -> torch.Tensor:
    """Solve M x = b for a symmetric positive (semi-)definite ``matvec`` M, batched over dim 0.

    Stops per sample when ||r|| <= tol * ||b|| (absolute when b = 0). Differentiable through
    the iterations when the inputs require grad.
    """
    if tol <= 0 or max_iter < 1:
        raise ValueError(f"cg: need tol > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - matvec(x) if x0 is not None else b.clone()
    p = r.clone()
    rr = _dot(r, r)
    b_norm2 = _dot(b, b)
    threshold = (tol**2) * torch.where(b_norm2 > 0, b_norm2, torch.ones_like(b_norm2))
    for _ in range(max_iter):
        active = rr > threshold
        if not bool(active.any()):
            break
        mp = matvec(p)
        pmp = _dot(p, mp)
        alpha = torch.where(active & (pmp > 0), rr / torch.where(pmp > 0, pmp, 1.0), 0.0)
        x = x + alpha * p
        r = r - alpha * mp
        rr_new = _dot(r, r)
        beta = torch.where(active, rr_new / torch.where(rr > 0, rr, 1.0), 0.0)
        p = torch.where(active, r + beta * p, p)
        rr = torch.where(active, rr_new, rr)
    return x


def largest_eigenvalue(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    like: torch.Tensor,
    iters: int = 50,
    seed: int = 0,
) -> float:
    """Largest eigenvalue of a symmetric positive semi-definite ``matvec`` by power iteration.

    Started from a fixed-seed Gaussian vector shaped like ``like`` (one sample, batch dim 1),
    so the estimate is deterministic; it approaches lambda_max from below.
    """
    generator = torch.Generator(device=like.device).manual_seed(seed)
    v = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    value = 0.0
    for _ in range(iters):
        v = v / v.norm().clamp_min(1e-30)
        w = matvec(v)
        value = float((v * w).sum())
        v = w
    return value
