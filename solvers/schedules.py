"""Noise schedules of the solvers and priors, in one place (docs/solvers/index.md).

VP (DDPM) tables. ``alphas_cumprod`` is abar_t = prod_{s <= t} (1 - beta_s) for betas
``linear`` from beta_start to beta_end over T training steps (Ho et al. 2020) or
``scaled_linear``, linear in sqrt(beta) (the LDM / Stable Diffusion schedule, Rombach et al.
2022). ``vp_sigmas`` gives the EDM noise levels sigma_t = sqrt((1 - abar_t) / abar_t) of a table
(Karras et al. 2022, Table 1, "VP"). ``DDPMScheduleConfig`` declares the table's
hyperparameters (beta_start, beta_end, train_steps) once for the solvers that use one.

Respacing N of the T training steps (0-based indices into a table):

- ``respace``: t_j = round(j (T - 1) / (N - 1)), both ends kept, as guided-diffusion's
  ``space_timesteps`` does (Nichol & Dhariwal 2021; used by DPS);
- ``uniform_timesteps``: the LDM DDIM "uniform" discretisation tau_i = i floor(T / N) + 1, the
  +1 dropped when it would run past the table (Song et al. 2021; Rombach et al. 2022);
- ``even_timesteps``: DDPM times t_s = round(s T / N), s = 1..N (index t_s - 1).

EDM poly-rho grids (Karras et al. 2022, eq. 5): ``karras_sigmas(n, lo, hi, rho)`` gives n
levels from ``hi`` down to ``lo``, evenly spaced in sigma^(1/rho), then 0; ``poly_sigmas`` the
same without the final 0. ``annealing_sigmas`` builds the N + 1 levels of an N-step annealing
loop ending at 0, in the two variants of the DAPS code (Zhang et al., CVPR 2025;
docs/solvers/daps.md):

- ``"main"`` (main branch): the poly levels of r = linspace(0, 1, N + 1), the first N of them,
  then 0, so ``lo`` itself is never used;
- ``"legacy"`` (legacy branch): the poly levels of r = linspace(0, 1, N), ``lo`` included,
  then 0.

Only torch and ``solvers.config`` are imported, so ``solvers.priors`` can use this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from solvers.config import Order, SolverConfig, hyper

BETA_SCHEDULES = ("linear", "scaled_linear")
SCHEDULE_VARIANTS = ("main", "legacy")


class ScheduleError(ValueError):
    """Arguments that define no schedule; the message names the argument and its range."""


# -- VP tables -------------------------------------------------------------------------------------
def alphas_cumprod(
    train_steps: int,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    beta_schedule: str = "linear",
    beta_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """abar_t (float64, shape (train_steps,)) of a ``BETA_SCHEDULES`` beta schedule.

    The betas are laid out in ``beta_dtype`` and the product taken in float64; the VP-grid
    solvers pass float32 (the precision of diffusers' DDPMScheduler betas), which keeps their
    grids as they were.
    """
    if beta_schedule not in BETA_SCHEDULES:
        raise ScheduleError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")
    if not 0 < beta_start < beta_end < 1:
        raise ScheduleError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, train_steps, dtype=beta_dtype)
    else:
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, train_steps, dtype=beta_dtype)
        betas = betas.pow(2)
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def adm_linear_alphas_cumprod(train_steps: int = 1000) -> torch.Tensor:
    """abar_t of guided-diffusion's "linear" schedule: the DDPM betas 1e-4 .. 0.02 with both
    ends scaled by 1000 / T, so any T spans the same noise range (Nichol & Dhariwal 2021)."""
    scale = 1000 / train_steps
    return alphas_cumprod(train_steps, scale * 1e-4, scale * 0.02)


def vp_sigmas(abar: torch.Tensor) -> torch.Tensor:
    """The EDM noise levels sqrt((1 - abar) / abar) of VP levels ``abar``."""
    return ((1.0 - abar) / abar).sqrt()


# -- respacing -------------------------------------------------------------------------------------
def respace(train_steps: int, n: int) -> torch.Tensor:
    """``n`` indices t_j = round(j (T - 1) / (n - 1)) into a T-step table; ``n = 1``: [T - 1]."""
    if n == 1:
        return torch.tensor([train_steps - 1])
    return torch.arange(n, dtype=torch.float64).mul((train_steps - 1) / (n - 1)).round().long()


def uniform_timesteps(train_steps: int, n: int) -> torch.Tensor:
    """``n`` indices tau_i = i floor(T / n) + 1 (LDM DDIM "uniform"), without the +1 when
    tau_{n-1} would pass the table's last index; tau_0 is then 0."""
    c = train_steps // n
    offset = min(1, train_steps - 1 - (n - 1) * c)
    return torch.arange(n) * c + offset


def even_timesteps(train_steps: int, n: int) -> torch.Tensor:
    """``n`` indices round(s T / n) - 1, s = 1..n: the DDPM times of an evenly reduced chain."""
    times = torch.round(torch.arange(1, n + 1, dtype=torch.float64) * train_steps / n)
    return times.long() - 1


# -- EDM poly-rho grids and annealing --------------------------------------------------------------
def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """``steps`` poly-``rho`` spaced levels from ``sigma_max`` down to ``sigma_min``, then 0."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ScheduleError(f"poly-rho grid steps must be an integer >= 1, got {steps!r}")
    if not 0 < sigma_min <= sigma_max:
        raise ScheduleError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    if steps == 1:
        return [float(sigma_max), 0.0]
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = [(hi + i / (steps - 1) * (lo - hi)) ** rho for i in range(steps)]
    sigmas[0], sigmas[-1] = float(sigma_max), float(sigma_min)  # exact ends, no rounding drift
    return [*sigmas, 0.0]


def poly_sigmas(n: int, sigma_max: float, sigma_min: float, rho: float = 7.0) -> list[float]:
    """``n`` levels (sigma_max^(1/rho) + r (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    r = linspace(0, 1, n), ends exact; ``n = 1`` gives ``[sigma_max]``."""
    return karras_sigmas(n, sigma_min, sigma_max, rho)[:-1]


def annealing_sigmas(
    steps: int, sigma_max: float, sigma_min: float, rho: float = 7.0, variant: str = "main"
) -> list[float]:
    """``steps + 1`` decreasing levels sigma_0 = sigma_max, ..., sigma_steps = 0."""
    if variant not in SCHEDULE_VARIANTS:
        raise ScheduleError(f"schedule variant must be one of {SCHEDULE_VARIANTS}, got {variant!r}")
    if variant == "main":
        return [*poly_sigmas(steps + 1, sigma_max, sigma_min, rho)[:steps], 0.0]
    return [*poly_sigmas(steps, sigma_max, sigma_min, rho), 0.0]


# -- hyperparameters -------------------------------------------------------------------------------
def beta_start_field(default: float = 1e-4, source: str = "DDPM (Ho et al. 2020): 1e-4") -> Any:
    """The ``beta_start`` hyperparameter (one range for every solver; a default may differ)."""
    return hyper(default, 1e-6, 0.1, log=True, source=source)


def beta_end_field(default: float = 0.02, source: str = "DDPM (Ho et al. 2020): 0.02") -> Any:
    """The ``beta_end`` hyperparameter (one range for every solver; a default may differ)."""
    return hyper(default, 1e-4, 0.5, log=True, source=source)


@dataclass(frozen=True)
class DDPMScheduleConfig(SolverConfig):
    """The DDPM beta-schedule hyperparameters of a solver that builds its own VP table."""

    beta_start: float = beta_start_field()
    beta_end: float = beta_end_field()
    train_steps: int = hyper(1000, 2, 100000, log=True, source="DDPM (Ho et al. 2020): T = 1000")

    orders = (Order("beta_start", "beta_end", strict=True),)
