"""Alpha-bar grids of the VP-form solvers (ReSample, C-DPS) over a prior's EDM noise levels.

Both solvers run in the VP variable x_t = sqrt(ab_t) (x0 + sigma_t n), with
sigma_t^2 = (1 - ab_t) / ab_t, on a grid of ab levels taken from a DDPM alphas_cumprod table
(Ho et al. 2020; a VP prior's own table) or from EDM noise levels (Karras et al. 2022).
``VPGridSolver`` is their common base: the grid, the step count and a step's noise level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from solvers.base import Solver, SolverInputError
from solvers.config import Order, SolverConfig, choice, hyper
from solvers.priors.base import Prior
from solvers.priors.vp import VPDenoiser
from solvers.schedules import (
    DDPMScheduleConfig,
    alphas_cumprod,
    even_timesteps,
    karras_sigmas,
    uniform_timesteps,
)

SCHEDULES = ("auto", "linear", "karras")


@dataclass(frozen=True)
class VPGridConfig(DDPMScheduleConfig):
    """How a VP-form solver lays its alpha-bar grid over the prior's EDM noise levels.

    ``auto``: a VP prior's own alphas_cumprod table (solvers.priors.vp), else ``linear``.
    ``linear``: DDPM betas linspace(beta_start, beta_end, train_steps) (Ho et al. 2020).
    ``karras``: sigma_i = (s_max^(1/rho) + i/(T-1) (s_min^(1/rho) - s_max^(1/rho)))^rho
    (EDM "poly-7", Karras et al. 2022), ab = 1 / (1 + sigma^2).
    """

    schedule: str = choice("auto", SCHEDULES, source="ours; auto = the prior's own VP table")
    karras_sigma_min: float = hyper(0.002, 1e-5, 1.0, log=True, source="EDM (Karras et al.)")
    karras_sigma_max: float = hyper(80.0, 1.0, 1e4, log=True, source="EDM (Karras et al.)")
    karras_rho: float = hyper(7.0, 1.0, 20.0, source="EDM (Karras et al.)")

    orders = (
        *DDPMScheduleConfig.orders,
        Order("karras_sigma_min", "karras_sigma_max", strict=True),
    )


def alpha_bar_table(prior: Prior, config: VPGridConfig) -> torch.Tensor:
    """The DDPM alphas_cumprod table, float64: entry k is ab at DDPM time k+1.

    Entries noisier than the prior's ``sigma_max`` are dropped (a VP prior may cap its range
    below its table's top), so every level of the grid is one the prior accepts.
    """
    if config.schedule == "auto" and isinstance(prior, VPDenoiser):
        table = 1.0 / (1.0 + torch.exp(2.0 * prior.log_sigmas.detach().cpu().to(torch.float64)))
    else:
        table = alphas_cumprod(
            config.train_steps, config.beta_start, config.beta_end, beta_dtype=torch.float32
        )
    return table[(1.0 - table) / table <= prior.sigma_max**2 * (1 + 1e-9)]


def karras_alpha_bars(prior: Prior, config: VPGridConfig, n: int) -> torch.Tensor:
    """ab of ``n`` EDM poly-rho noise levels, cleanest first, clipped to the prior's range."""
    lo = max(config.karras_sigma_min, prior.sigma_min)
    hi = min(config.karras_sigma_max, prior.sigma_max)
    sigmas = torch.tensor(karras_sigmas(n, lo, hi, config.karras_rho)[:-1], dtype=torch.float64)
    return 1.0 / (1.0 + sigmas.flip(0) ** 2)


def table_for_steps(prior: Prior, config: VPGridConfig, steps: int) -> torch.Tensor:
    """``alpha_bar_table``, refused when it has fewer levels than a run of ``steps`` needs."""
    table = alpha_bar_table(prior, config)
    if steps > table.numel():
        raise SolverInputError(
            f"steps = {steps} exceeds the {table.numel()} levels of the noise table (up to the "
            f"prior's sigma_max); use steps <= {table.numel()}"
        )
    return table


def ddim_levels(prior: Prior, config: VPGridConfig, steps: int) -> torch.Tensor:
    """ab levels (steps + 1,) of a T-step DDIM run: ab(index i) = levels[i + 1], end = levels[0].

    Table schedules use the LDM "uniform" discretisation tau_i = i floor(N/T) + 1 (+1 dropped
    when T = N) and end at table[0] (ab = 1 when T = N); ``karras`` ends at the prior's
    sigma_min (0 for the GMM).
    """
    if config.schedule == "karras":
        end = torch.tensor([1.0 / (1.0 + prior.sigma_min**2)], dtype=torch.float64)
        return torch.cat([end, karras_alpha_bars(prior, config, steps)])
    table = table_for_steps(prior, config, steps)
    taus = uniform_timesteps(table.numel(), steps)
    end = table[:1] if taus[0] == 1 else torch.ones(1, dtype=torch.float64)
    return torch.cat([end, table[taus]])


def ddpm_levels(prior: Prior, config: VPGridConfig, steps: int) -> torch.Tensor:
    """ab levels (steps + 1,) of an ancestral chain: levels[0] = 1 (clean), levels[S] noisiest.

    Table schedules take DDPM times t_s = round(s N / S), so the per-step betas of a reduced
    chain are beta_s = 1 - ab(t_s) / ab(t_{s-1}), re-derived from alpha-bar on the sub-grid.
    """
    one = torch.ones(1, dtype=torch.float64)
    if config.schedule == "karras":
        return torch.cat([one, karras_alpha_bars(prior, config, steps)])
    table = table_for_steps(prior, config, steps)
    return torch.cat([one, table[even_timesteps(table.numel(), steps)]])


def level_sigma(prior: Prior, ab: float) -> float:
    """The EDM noise level sqrt((1 - ab) / ab), clipped to the prior's [sigma_min, sigma_max]."""
    sigma = math.sqrt(max(1.0 - ab, 0.0) / ab)
    return min(max(sigma, prior.sigma_min), prior.sigma_max)


def bad_rows(t: torch.Tensor) -> torch.Tensor:
    """Rows (dim 0) holding NaN or inf."""
    return ~torch.isfinite(t.flatten(1)).all(1)


def zero_rows(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``t`` with the masked rows replaced by zeros (kept away from operators that reject NaN)."""
    return torch.where(rows.view(-1, *([1] * (t.dim() - 1))), torch.zeros_like(t), t)


class VPGridSolver(Solver):
    """A solver stepping down a grid of ``config.steps`` ab levels (``levels``, cleanest first),
    set by the subclass at ``init``: step k runs from level steps - k to steps - k - 1."""

    config_class = VPGridConfig

    def __init__(self, config: SolverConfig | None = None) -> None:
        super().__init__(config)
        self.levels = torch.ones(1, dtype=torch.float64)

    @property
    def num_steps(self) -> int:
        return self.config.steps

    def denoised(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Tweedie's estimate D(x_t / sqrt(ab_t), sigma_t) of the VP state before step ``k``
        (level steps - k), in image space (decoded for latent priors)."""
        prior = self.prior
        assert prior is not None
        ab = float(self.levels[self.config.steps - k])
        x0hat = prior.denoise(x / math.sqrt(ab), level_sigma(prior, ab))
        return prior.decode(x0hat) if prior.is_latent else x0hat

    def noise_level(self, k: int) -> float:
        ab = float(self.levels[self.config.steps - 1 - k])
        return math.sqrt(max(1.0 - ab, 0.0) / ab)
