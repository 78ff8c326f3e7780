"""DDNM and DDNM+: the denoising diffusion null-space model (Wang, Yu, Zhang, ICLR 2023).

"Zero-shot image restoration using denoising diffusion null-space model" (docs/solvers/ddnm.md),
for pixel priors and linear operators with a cheap SVD A = U diag(s) V^T (``operators.svd``), in
the EDM form of the prior contract, on the grid of DDRM (solvers/ddrm.py).

Step k (s = sigma_k, s' = sigma_{k+1}), one denoiser call, x0_hat = D(x_k, s):

    x0|t = A^+ y + (I - A^+ A) x0_hat              (range-null space decomposition; ``ddnm``)
    c = eta s' sqrt(s^2 - s'^2) / s,   a = 1 - sqrt(s'^2 - c^2) / s
    x_{k+1} = x0|t + sqrt(s'^2 - c^2) (x_k - x0|t) / s + c xi + (s^2 - s'^2) force

i.e. the DDIM step with the rectified estimate (eta = 1: the DDPM posterior of the paper's
Algorithm 1); a is the weight of x0|t in x_{k+1}. In the SVD basis A^+ y keeps the observed
coordinates ybar_i = (U^T y)_i / s_i and (I - A^+ A) the unobserved ones, so for noise-free y,
A x0|t = y exactly.

DDNM+ (``ddnm_plus``, the paper's noisy case, its eq. 17-19): the range correction is scaled per
singular direction, x0|t = x0_hat - V diag(lambda) V^T A^+ (A x0_hat - y), and the step's noise
shrinks so that the noise of y carried by x0|t (std lambda_i tau_i, tau_i = sigma_y / s_i, with
weight a) plus the fresh noise has the step's variance c^2:

    lambda_i = 1 if a tau_i <= c, else c / (a tau_i);   gamma_i = c^2 - (a lambda_i tau_i)^2
    xbar_{k+1} = V^T [x0|t + sqrt(s'^2 - c^2)(x_k - x0|t)/s] + sqrt(gamma) eps  (observed)

and the unobserved coordinates get the full c. The paper's time travel (repeated steps) is not
run (docs/solvers/ddnm.md). The start is DDRM's; ``state.x0`` is x0|t of the last step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from operators import Operator
from solvers.base import Rows, State, Update, measurement_rows, particle_randn
from solvers.config import Order, choice, hyper
from solvers.ddrm import F64, SpectralSolver, problem_groups
from solvers.preset import Preset
from solvers.registry import register
from solvers.schedules import BETA_SCHEDULES, DDPMScheduleConfig

PAPER = "DDNM (Wang et al., ICLR 2023)"


@dataclass(frozen=True)
class DDNMConfig(DDPMScheduleConfig):
    """Hyperparameters of DDNM / DDNM+; the DDPM table's from ``DDPMScheduleConfig``."""

    steps: int = hyper(
        100, 1, 10000, log=True, source=f"{PAPER}: reference code, 100 respaced timesteps"
    )
    eta: float = hyper(
        0.85, 0.0, 1.0, source=f"{PAPER}: reference code eta 0.85 (1: Algorithm 1's DDPM step)"
    )
    beta_schedule: str = choice("linear", BETA_SCHEDULES, source="DDPM linear (ADM)")

    orders = (
        *DDPMScheduleConfig.orders,
        Order("steps", "train_steps", why="the grid respaces the training timesteps"),
    )


# "gmm": few steps keep the contract tests fast (measured in docs/solvers/ddnm.md).
DDNM_PRESETS: dict[str, Preset] = {
    "gmm": Preset(
        overrides={"steps": 20},
        task="matrix",
        source="ours: 20 steps (the contract tests' budget), eta as the reference code",
    ),
}


@register(presets=DDNM_PRESETS)
class DDNM(SpectralSolver):
    """The denoising diffusion null-space model (Wang et al., ICLR 2023), noise-free form."""

    name = "ddnm"
    config_class = DDNMConfig
    config: DDNMConfig
    noisy = False  # DDNM+ (the subclass) scales the range correction by lambda

    def _init(
        self, generators: list[torch.Generator], indices: list[int], y: torch.Tensor
    ) -> State:
        return self.start(generators, indices, y)

    def coefficients(self, k: int) -> tuple[float, float, float]:
        """(c, b, a): the fresh-noise std c, the weight b = sqrt(s'^2 - c^2) / s of x_k - x0|t
        and the weight a = 1 - b of x0|t in x_{k+1}."""
        s, s_next = self.sigmas[k], self.sigmas[k + 1]
        c = self.config.eta * s_next * math.sqrt(max(s**2 - s_next**2, 0.0)) / s
        b = math.sqrt(max(s_next**2 - c**2, 0.0)) / s
        return c, b, 1.0 - b

    def scale(self, tau: torch.Tensor, k: int) -> torch.Tensor:
        """lambda per spectral coordinate: 1 for DDNM; DDNM+'s min(1, c / (a tau))."""
        return torch.ones_like(tau)

    def rectified(
        self, xbar0: torch.Tensor, ybar: torch.Tensor, s: torch.Tensor, lam: torch.Tensor
    ) -> torch.Tensor:
        """V^T x0|t: xbar0 - lambda (xbar0 - ybar) on the observed coordinates."""
        return torch.where(s > 0, xbar0 - lam * (xbar0 - ybar), xbar0)

    def data_consistent(
        self, x0_hat: torch.Tensor, y: torch.Tensor, part: Operator, k: int
    ) -> torch.Tensor:
        """x0|t of one problem's rows at step ``k`` (A^+ y + (I - A^+ A) x0_hat for DDNM)."""
        svd, s, ybar, tau = self.spectral_data(part, y)
        c = self.rectified(svd.v_t(x0_hat.to(F64)), ybar, s, self.scale(tau, k))
        return svd.v(c).to(x0_hat.dtype)

    def _update(self, rows: Rows, k: int) -> Update:
        """One DDNM / DDNM+ step (module docstring)."""
        s_now, s_next = self.sigmas[k], self.sigmas[k + 1]
        x = rows.x.detach()
        denoised = self.denoised(x, k)
        c, b, a = self.coefficients(k)
        eps = particle_randn(rows.generators, x).to(F64)
        x_next = torch.empty_like(x)
        x0 = torch.empty_like(x)
        for part, at in problem_groups(rows.operator, x.shape[0], x.device):
            svd, s, ybar, tau = self.spectral_data(part, measurement_rows(rows.y, at))
            lam = self.scale(tau, k)
            c0 = self.rectified(svd.v_t(denoised[at].to(F64)), ybar, s, lam)
            xbar = svd.v_t(x[at].to(F64))
            carried = torch.where(s > 0, a * lam * tau, 0.0) if self.noisy else 0.0 * tau
            fresh = (c**2 - carried.pow(2)).clamp_min(0).sqrt()
            x_next[at] = svd.v(c0 + b * (xbar - c0) + fresh * eps[at]).to(x.dtype)
            x0[at] = svd.v(c0).to(x.dtype)
        if rows.force is not None:
            x_next = x_next + (s_now**2 - s_next**2) * rows.force.to(x_next)
        return Update(x_next, x_next if s_next == 0 else x0)


DDNM_PLUS_PRESETS: dict[str, Preset] = {
    "gmm": Preset(
        overrides={"steps": 20},
        task="matrix",
        source="ours: 20 steps (the contract tests' budget), eta as the reference code",
    ),
}


@register(presets=DDNM_PLUS_PRESETS)
class DDNMPlus(DDNM):
    """DDNM+ (Wang et al., ICLR 2023): the range correction scaled by lambda for noisy y."""

    name = "ddnm_plus"
    noisy = True

    def scale(self, tau: torch.Tensor, k: int) -> torch.Tensor:
        """lambda_i = 1 where a tau_i <= c, else c / (a tau_i) (the paper's eq. 19)."""
        c, _, a = self.coefficients(k)
        need = a * tau
        return torch.where(need <= c, 1.0, c / need.clamp_min(1e-300))
