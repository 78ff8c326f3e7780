"""DDRM: denoising diffusion restoration models (Kawar, Elad, Ermon, Song, NeurIPS 2022).

"Denoising diffusion restoration models" (docs/solvers/ddrm.md), for pixel priors and linear
operators with a cheap SVD A = U diag(s) V^T (``operators.svd.svd_of``), in the EDM form of the
prior contract (the paper's own formulation is variance exploding: x_t = x_0 + sigma_t n).

Noise grid. As PiGDM: the levels of a DDPM table respaced to ``steps`` timesteps, sigma_0 > ...
> sigma_{K-1}, clamped into the prior's [sigma_min, sigma_max], then sigma_K = 0.

Spectral variables. xbar = V^T x, ybar_i = (U^T y)_i / s_i on the observed coordinates (s_i > 0),
whose noise has std tau_i = sigma_y / s_i. Step k (s = sigma_k, s' = sigma_{k+1}), one denoiser
call, x0_hat = D(x_k, s), xbar0 = V^T x0_hat, eps ~ N(0, I) (the paper's eq. 7-8):

    s_i = 0:            xbar'_i = xbar0_i + sqrt(1 - eta^2) s' (xbar_i - xbar0_i) / s + eta s' eps_i
    s' < tau_i:         xbar'_i = xbar0_i + sqrt(1 - eta^2) s' (ybar_i - xbar0_i) / tau_i
                                  + eta s' eps_i
    s' >= tau_i:        xbar'_i = (1 - eta_b) xbar0_i + eta_b ybar_i
                                  + sqrt(s'^2 - eta_b^2 tau_i^2) eps_i

then x_{k+1} = V xbar' + (s^2 - s'^2) force. Start (the paper's x_T): observed coordinates with
sigma_0 > tau_i are N(ybar_i, sigma_0^2 - tau_i^2), the others N(0, 1 + sigma_0^2) (the VE image
of the DDPM start). The last step (s' = 0) returns xbar0 on coordinates with tau_i > 0 and the
eta_b mix of xbar0 and ybar where sigma_y = 0.

``state.x0`` is x0_hat of the last step (zeros before the first) and the sample after the last.
A batch of several problems (``operators.stack_rows``) uses each problem's SVD on its rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from operators import Operator, OperatorInputError
from operators.svd import SUPPORTED, OperatorSVD, svd_of
from solvers.base import (
    Rows,
    Solver,
    SolverInputError,
    State,
    Update,
    measurement_rows,
    particle_randn,
)
from solvers.config import Order, choice, hyper
from solvers.dps import check_image_shape
from solvers.preset import Preset
from solvers.priors.base import Prior
from solvers.registry import register
from solvers.schedules import (
    BETA_SCHEDULES,
    DDPMScheduleConfig,
    alphas_cumprod,
    respace,
    vp_sigmas,
)

PAPER = "DDRM (Kawar et al., NeurIPS 2022)"
F64 = torch.float64


def spectral_sigmas(config: DDPMScheduleConfig, steps: int, prior: Prior) -> list[float]:
    """The ``steps + 1`` decreasing EDM levels of the respaced DDPM table, clamped into the
    prior's [sigma_min, sigma_max], ending at 0."""
    abar = alphas_cumprod(
        config.train_steps, config.beta_start, config.beta_end, config.beta_schedule
    )
    sigmas = vp_sigmas(abar[respace(config.train_steps, steps)]).flip(0).tolist()
    return [min(max(s, prior.sigma_min), prior.sigma_max) for s in sigmas] + [0.0]


def problem_groups(
    operator: Operator, n: int, device: torch.device
) -> list[tuple[Operator, torch.Tensor]]:
    """(problem operator, row indices on ``device``) for each problem of a batch of n rows."""
    out = []
    for part, rows in operator.row_groups():
        index = torch.arange(n) if rows is None else rows
        out.append((part, index.to(device)))
    return out


class SpectralSolver(Solver):
    """Shared machinery of the SVD-based solvers (DDRM, DDNM): the grid, the per-problem SVD
    cache and the refusal of operators without a cheap SVD."""

    latent = False
    linear_only = True

    def __init__(self, config: DDPMScheduleConfig | None = None) -> None:
        super().__init__(config)
        self.sigmas: list[float] = []
        # per problem operator, by identity; the operator is kept so that its id stays its own
        self._svds: dict[int, tuple[Operator, OperatorSVD]] = {}

    @property
    def num_steps(self) -> int:
        return self.config.steps  # type: ignore[attr-defined]

    def noise_level(self, k: int) -> float:
        """sigma_{k+1}, the noise level of x after step ``k``."""
        return self.sigmas[k + 1]

    def denoised(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """x0_hat = D(x_k, sigma_k)."""
        assert self.prior is not None
        with torch.no_grad():
            return self.prior.denoise(x, self.sigmas[k])

    def check_problem(self, prior: Prior, operator: Operator, y: torch.Tensor) -> None:
        """The base checks, then an SVD for every problem's operator (``operators.svd``)."""
        super().check_problem(prior, operator, y)
        for part, _ in operator.row_groups():
            try:
                svd_of(part)
            except OperatorInputError as err:
                raise SolverInputError(
                    f"{self.name} needs a linear operator with a cheap SVD "
                    f"({', '.join(SUPPORTED)}): {err}"
                ) from err

    def svd(self, part: Operator) -> OperatorSVD:
        """The SVD of one problem's operator (computed once per operator and run)."""
        cached = self._svds.get(id(part))
        if cached is not None and cached[0] is part:
            return cached[1]
        svd = svd_of(part)
        self._svds[id(part)] = (part, svd)
        return svd

    def spectral_data(
        self, part: Operator, y: torch.Tensor
    ) -> tuple[OperatorSVD, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(svd, s, ybar, tau) of one problem on the rows' device, float64: the singular values,
        ybar = (U^T y) / s and tau = sigma_y / s on the observed coordinates (0 elsewhere)."""
        svd = self.svd(part)
        s = svd.singular_values.to(y.device)
        observed = s > 0
        safe = s.clamp_min(1e-300)
        ybar = torch.where(observed, svd.u_t(y.to(F64)) / safe, 0.0)
        tau = torch.where(observed, part.sigma / safe, 0.0)
        return svd, s, ybar, tau

    def start(
        self, generators: list[torch.Generator], indices: list[int], y: torch.Tensor
    ) -> State:
        """The paper's x_T: N(ybar_i, sigma_0^2 - tau_i^2) where sigma_0 > tau_i on observed
        coordinates, N(0, 1 + sigma_0^2) elsewhere."""
        prior, operator = self.prior, self.operator
        assert prior is not None and operator is not None
        dtype, device = prior.dtype, prior.device
        zeros = torch.zeros(len(indices), *prior.shape, dtype=dtype, device=device)
        check_image_shape(self.name, zeros, operator)
        self.sigmas = spectral_sigmas(self.config, self.num_steps, prior)  # type: ignore[arg-type]
        self._svds = {}
        y = y.to(device=device, dtype=dtype)
        xi = particle_randn(generators, zeros).to(F64)
        s0 = self.sigmas[0]
        x = torch.empty_like(zeros)
        for part, at in problem_groups(operator, len(indices), device):
            svd, s, ybar, tau = self.spectral_data(part, measurement_rows(y, at))
            near = (s > 0) & (tau < s0)
            c = torch.where(
                near,
                ybar + (s0**2 - tau.pow(2)).clamp_min(0).sqrt() * xi[at],
                math.sqrt(1.0 + s0**2) * xi[at],
            )
            x[at] = svd.v(c).to(dtype)
        return State(
            x=x,
            x0=zeros,
            generators=generators,
            indices=indices,
            status=torch.zeros(len(indices), dtype=torch.long),
            y=y,
        )


@dataclass(frozen=True)
class DDRMConfig(DDPMScheduleConfig):
    """Hyperparameters of DDRM; the DDPM table's from ``DDPMScheduleConfig``."""

    steps: int = hyper(20, 1, 10000, log=True, source=f"{PAPER}: 20 steps (all its tables)")
    eta: float = hyper(0.85, 0.0, 1.0, source=f"{PAPER}: eta = 0.85")
    eta_b: float = hyper(1.0, 0.0, 1.0, source=f"{PAPER}: eta_b = 1")
    beta_schedule: str = choice("linear", BETA_SCHEDULES, source="DDPM linear (ADM)")

    orders = (
        *DDPMScheduleConfig.orders,
        Order("steps", "train_steps", why="the grid respaces the training timesteps"),
    )


# "gmm": the paper's 20 steps, eta and eta_b (measured in docs/solvers/ddrm.md).
DDRM_PRESETS: dict[str, Preset] = {
    "gmm": Preset(
        overrides={"steps": 20},
        task="matrix",
        source=f"{PAPER}: its reference 20 steps, eta 0.85, eta_b 1",
    ),
}


@register(presets=DDRM_PRESETS)
class DDRM(SpectralSolver):
    """Denoising diffusion restoration models (Kawar et al., NeurIPS 2022): pixel priors, linear
    operators with a cheap SVD."""

    name = "ddrm"
    config_class = DDRMConfig
    config: DDRMConfig

    def _init(
        self, generators: list[torch.Generator], indices: list[int], y: torch.Tensor
    ) -> State:
        return self.start(generators, indices, y)

    def spectral_step(
        self,
        xbar: torch.Tensor,
        xbar0: torch.Tensor,
        ybar: torch.Tensor,
        s: torch.Tensor,
        tau: torch.Tensor,
        k: int,
        eps: torch.Tensor,
    ) -> torch.Tensor:
        """xbar' of the paper's eq. 7-8 from level sigma_k to sigma_{k+1} (module docstring)."""
        eta, eta_b = self.config.eta, self.config.eta_b
        level, nxt = self.sigmas[k], self.sigmas[k + 1]
        keep = math.sqrt(1.0 - eta**2) * nxt
        unobserved = xbar0 + keep * (xbar - xbar0) / level + eta * nxt * eps
        less_noisy = (s > 0) & (nxt < tau)
        from_y = xbar0 + keep * (ybar - xbar0) / tau.clamp_min(1e-300) + eta * nxt * eps
        more_noisy = (
            (1.0 - eta_b) * xbar0
            + eta_b * ybar
            + (nxt**2 - eta_b**2 * tau.pow(2)).clamp_min(0).sqrt() * eps
        )
        observed = torch.where(less_noisy, from_y, more_noisy)
        return torch.where(s > 0, observed, unobserved)

    def _update(self, rows: Rows, k: int) -> Update:
        """One DDRM step in the spectral domain (module docstring)."""
        s_now, s_next = self.sigmas[k], self.sigmas[k + 1]
        x = rows.x.detach()
        denoised = self.denoised(x, k)
        eps = particle_randn(rows.generators, x).to(F64)
        x_next = torch.empty_like(x)
        for part, at in problem_groups(rows.operator, x.shape[0], x.device):
            svd, s, ybar, tau = self.spectral_data(part, measurement_rows(rows.y, at))
            c = self.spectral_step(
                svd.v_t(x[at].to(F64)), svd.v_t(denoised[at].to(F64)), ybar, s, tau, k, eps[at]
            )
            x_next[at] = svd.v(c).to(x.dtype)
        if rows.force is not None:
            x_next = x_next + (s_now**2 - s_next**2) * rows.force.to(x_next)
        return Update(x_next, x_next if s_next == 0 else denoised)
