"""Particle interaction on the driver: repulsion, pruning and SMC resampling (docs/ensemble.md).

Pure functions of per-particle features and measurement losses, so they are checked against
hand-computed kernels and weights. Ancestor arrays say, for each slot i, which particle's state
slot i holds after a selection; ``place_copies`` keeps survivors in their own slots so that only
the freed slots receive copies.
"""

from __future__ import annotations

import math

import torch


def rbf_repulsion(features: torch.Tensor, svgd: bool = False) -> torch.Tensor:
    """Feature-space push g_i = sum_{j != i} 2 k_ij (f_i - f_j) / h_i (RLSD, particle guidance).

    k_ij = exp(-||f_i - f_j||^2 / h_i) with the per-row bandwidth h_i = med_{j != i}(d_ij)^2 /
    log(N - 1); at N = 2, where log(N - 1) = 0, log 2 is used instead. ``svgd`` divides each row
    by its kernel sum sum_j k_ij (self term k_ii = 1 included). Rows of identical particles get
    no push.
    """
    f = features.flatten(1).to(torch.float64)
    n = f.shape[0]
    if n < 2:
        return torch.zeros_like(f)
    dist = torch.cdist(f, f)
    off = ~torch.eye(n, dtype=torch.bool)
    others = dist[off].view(n, n - 1)
    median = others.quantile(0.5, dim=1)
    h = median.pow(2) / math.log(n - 1 if n > 2 else 2)
    h = torch.where(h > 0, h, torch.ones_like(h))  # all neighbours coincide: no push below
    kernel = torch.exp(-dist.pow(2) / h[:, None]) * off
    push = 2 * (f * kernel.sum(1, keepdim=True) - kernel @ f) / h[:, None]
    if svgd:
        push = push / (1 + kernel.sum(1, keepdim=True))
    return push


def place_copies(ancestors: torch.Tensor) -> torch.Tensor:
    """The same multiset of ancestors, arranged so that every surviving particle keeps its slot.

    Slots whose own particle survives hold it; the remaining copies fill the other slots in
    increasing order. ``result[i] == i`` marks a slot that needs no copy.
    """
    n = ancestors.numel()
    counts = torch.bincount(ancestors, minlength=n)
    placed = torch.full((n,), -1, dtype=torch.long)
    survivors = counts > 0
    placed[survivors] = torch.arange(n)[survivors]
    extra = []
    for particle in range(n):
        extra.extend([particle] * max(int(counts[particle]) - 1, 0))
    placed[~survivors] = torch.tensor(extra, dtype=torch.long)
    return placed


def top_k_ancestors(
    loss: torch.Tensor, keep: int, refill: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ancestors, kept mask) of a top-k selection by measurement loss (lowest wins).

    With ``refill`` the freed slots receive the survivors in rank order (best first, cycling);
    without, every slot keeps its own particle and ``kept`` marks which continue.
    """
    n = loss.numel()
    order = torch.sort(loss.to(torch.float64), stable=True).indices
    survivors = order[:keep]
    kept = torch.zeros(n, dtype=torch.bool)
    kept[survivors] = True
    if not refill:
        return torch.arange(n), kept
    ancestors = torch.arange(n)
    freed = (~kept).nonzero().flatten()
    ancestors[freed] = survivors[torch.arange(freed.numel()) % keep]
    return ancestors, torch.ones(n, dtype=torch.bool)


def smc_log_potential(
    loss: torch.Tensor, sigma_y: float, noise_level: float, temperature: float = 1.0
) -> torch.Tensor:
    """log phi_i = -temperature ||A(x0_i) - y||^2 / (2 (sigma_y^2 + r^2)) (docs/ensemble.md)."""
    return -temperature * loss.to(torch.float64) / (2 * (sigma_y**2 + noise_level**2))


def effective_sample_size(log_weights: torch.Tensor) -> float:
    """ESS = 1 / sum_i w_i^2 of the normalised weights."""
    w = torch.softmax(log_weights.to(torch.float64), dim=0)
    return float(1 / w.pow(2).sum())


def systematic_resample(log_weights: torch.Tensor, u: float) -> torch.Tensor:
    """Ancestors by systematic resampling: one uniform ``u`` in [0, 1), positions (u + i) / N."""
    w = torch.softmax(log_weights.to(torch.float64), dim=0)
    n = w.numel()
    positions = (u + torch.arange(n, dtype=torch.float64)) / n
    cumulative = torch.cumsum(w, 0)
    cumulative[-1] = 1.0  # guard against rounding below the last position
    return torch.searchsorted(cumulative, positions, right=True).clamp(max=n - 1)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties, inf ranked last); NaN when either
    side is constant (no ranking to compare)."""
    import numpy
    from scipy.stats import rankdata

    ranks = torch.from_numpy(numpy.stack([rankdata(a), rankdata(b)])).to(torch.float64)
    centred = ranks - ranks.mean(1, keepdim=True)
    norms = centred.norm(dim=1)
    if bool((norms == 0).any()):
        return float("nan")
    return float((centred[0] @ centred[1]) / (norms[0] * norms[1]))
