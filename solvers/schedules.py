"""Noise-level schedules shared by annealing solvers (EDM poly-rho spacing, Karras et al. 2022).

``poly_sigmas(n, hi, lo, rho)`` gives n levels from ``hi`` down to ``lo`` (both included),
evenly spaced in sigma^(1/rho). ``annealing_sigmas`` builds the N + 1 levels of an N-step
annealing loop ending at 0, in the two variants of the DAPS code (Zhang et al., CVPR 2025;
shared/reference/algorithms.md, "DAPS"):

- ``"main"`` (main branch): the poly levels of r = linspace(0, 1, N + 1), the first N of them,
  then 0, so ``lo`` itself is never used;
- ``"legacy"`` (legacy branch): the poly levels of r = linspace(0, 1, N), ``lo`` included,
  then 0.
"""

from __future__ import annotations

from solvers.priors.ode import karras_sigmas

SCHEDULE_VARIANTS = ("main", "legacy")


def poly_sigmas(n: int, sigma_max: float, sigma_min: float, rho: float = 7.0) -> list[float]:
    """``n`` levels (sigma_max^(1/rho) + r (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    r = linspace(0, 1, n), ends exact; ``n = 1`` gives ``[sigma_max]``."""
    return karras_sigmas(n, sigma_min, sigma_max, rho)[:-1]


def annealing_sigmas(
    steps: int, sigma_max: float, sigma_min: float, rho: float = 7.0, variant: str = "main"
) -> list[float]:
    """``steps + 1`` decreasing levels sigma_0 = sigma_max, ..., sigma_steps = 0."""
    if variant not in SCHEDULE_VARIANTS:
        raise ValueError(f"schedule variant must be one of {SCHEDULE_VARIANTS}, got {variant!r}")
    if variant == "main":
        return [*poly_sigmas(steps + 1, sigma_max, sigma_min, rho)[:steps], 0.0]
    return [*poly_sigmas(steps, sigma_max, sigma_min, rho), 0.0]
