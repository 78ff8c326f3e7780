"""TDS and Latent-TDS: the twisted diffusion sampler in the EDM form of the prior contract.

Wu, Trippe, Naesseth, Blei, Cunningham, "Practical and asymptotically exact conditional sampling
in diffusion models", NeurIPS 2023 (Algorithm 1). A weighted solver (solvers/base.py): each
particle moves by a twisted proposal and reports the log incremental importance weight of its
move; weighted (and, in an ensemble, resampled) particles converge to the posterior of the
discretised prior chain as the number of particles grows (docs/solvers/tds.md).

Levels s_0 > ... > s_K = 0: the respaced DDPM grid of DPS (``solvers.dps.prior_sigmas``). Start
x ~ N(0, (1 + s_0^2) I). The prior transition s -> s' < s is the DDPM ancestral step in EDM form
with the Tweedie estimate x0_hat = D(x, s):

    p(x' | x) = N(m, v I),   m = x0_hat + (s'^2 / s^2)(x - x0_hat),   v = s'^2 (s^2 - s'^2) / s^2.

Twist at level k < K (``twist_scale`` = lambda, ``inflation`` = c, sigma_y = the operator's noise,
at least ``min_noise``; A acts on decode(x0_hat) for Latent-TDS):

    log g_k(x) = lambda log N(y; A(x0_hat(x, s_k)), (sigma_y^2 + (c s_k)^2) I),

and g_K(x_0) = p(y | x_0) = N(y; A(x_0), sigma_y^2 I) exactly. Proposal
q(x' | x) = N(m + v u, v I) with u = grad log g_k(x) + force: ``force`` is an extra
log-density gradient, shifting the mean by v force, and it is part of q, so the weight stays
correct. Incremental log-weight of a move x -> x' = m + v u + sqrt(v) xi:

    log p(x' | x) - log q(x' | x) = (-|d|^2 + |d - v u|^2) / (2 v) = -<d, u> + v |u|^2 / 2
                                  = -sqrt(v) <xi, u> - v |u|^2 / 2      (d = x' - m),

computed in the last form (no cancellation between x' and m), plus log g_{k+1}(x') - log g_k(x).
The last step (s' = 0) is deterministic for p and q alike, x_K = x0_hat(x, s_{K-1}), and its
increment is log p(y | x_K) - log g_{K-1}(x). The initial log-weight is log g_0(x_start). The
Gaussian log-normalisers are kept, so with ``twist_scale = 1`` the mean of the exponentiated
total weights is an unbiased estimate of p(y) under the discretised chain (nothing is dropped,
although per-step normalisers, equal for every particle of one problem, could be).

Cost: ``init`` calls the denoiser (with a vector-Jacobian product) at x_start; steps 0..K-2 call
it once with a VJP at the new state, whose x0_hat, twist and twist gradient are cached in
``state.extra`` for the next step; the last step reuses the cached x0_hat. NFE = num_steps per
particle, with num_steps VJPs through the denoiser (and the decoder for Latent-TDS).

``state.x0`` is image(x0_hat) at the current state (after ``init`` too), and the sample x_K
(decoded) after the last step. A particle whose estimate turns non-finite gets NaN twist values
and is stopped by the template; its rows are kept out of the other particles' gradients
(``finite_residuals``), so one bad particle does not poison the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from operators import Operator
from solvers.base import (
    LOG_WEIGHT,
    Rows,
    Solver,
    State,
    Update,
    finite_residuals,
    particle_randn,
    per_row,
)
from solvers.config import Order, choice, hyper
from solvers.dps import check_image_shape, prior_sigmas
from solvers.preset import Preset
from solvers.registry import register
from solvers.schedules import (
    BETA_SCHEDULES,
    DDPMScheduleConfig,
    beta_end_field,
    beta_start_field,
)

PAPER = "TDS (Wu et al., NeurIPS 2023)"
F64 = torch.float64
# extra keys: the current state's twist log g_k(x), its gradient and x0_hat = D(x, s_k)
TWIST, TWIST_GRAD, DENOISED = "twist", "twist_grad", "denoised"


@dataclass(frozen=True)
class TDSConfig(DDPMScheduleConfig):
    """Hyperparameters of TDS (pixel priors); the DDPM table's from ``DDPMScheduleConfig``."""

    num_steps: int = hyper(
        100, 1, 10000, log=True, source="ours: 100 respaced DDPM steps (the GMM check)"
    )
    twist_scale: float = hyper(
        1.0, 0.0, 10.0, source=f"{PAPER}: 1, the plain twist p(y | x0_hat); 0: bootstrap filter"
    )
    inflation: float = hyper(
        0.0,
        0.0,
        10.0,
        source=f"{PAPER}: optional variance inflation sigma_y^2 + (c s)^2; 0: none",
    )
    min_noise: float = hyper(
        1e-3, 1e-8, 1.0, log=True, source="ours: floor on sigma_y so p(y | x) is a density"
    )
    beta_schedule: str = choice("linear", BETA_SCHEDULES, source="DDPM linear (ADM)")

    orders = (
        *DDPMScheduleConfig.orders,
        Order("num_steps", "train_steps", why="the grid respaces the training timesteps"),
    )


@dataclass(frozen=True)
class LatentTDSConfig(TDSConfig):
    """Latent-TDS: the LDM's DDPM table (as Latent-DPS)."""

    beta_schedule: str = choice(
        "scaled_linear", BETA_SCHEDULES, source="LDM FFHQ config (docs/solvers/dps.md)"
    )
    beta_start: float = beta_start_field(0.0015, source="LDM FFHQ: linear_start")
    beta_end: float = beta_end_field(0.0195, source="LDM FFHQ: linear_end")


# "gmm": single runs of N = 64 weighted particles, resampled once (multinomial) to 64 outputs,
# on MCGdiff instances 100-103 of (d, d_y) in {8, 80} x {1, 4}; mean SW / floor: inflation
# 0 / 0.25 / 0.5 / 1 / 2 / 4 at 100 steps: 14.0 (instances 102-103; one d = 80 instance lost
# every particle to overflow) / 2.38 / 2.43 / 2.85 / 3.38 / 3.70 (instances 100-101);
# 200 steps with 0.5: 2.23 (100-101) and 2.93 (102-103) against 2.43 and 3.10 at 100 steps.
_GMM_CHECK = "ours: GMM benchmark check of inflation and steps, N = 64 (docs/solvers/tds.md)"
_GMM = {"num_steps": 100, "inflation": 0.5}
TDS_PRESETS: dict[str, Preset] = {
    "gmm": Preset(overrides=_GMM, task="matrix", source=_GMM_CHECK),
    # 75 calls, DAPS's budget on the digits tasks (experiments/image_presets.py); inflation 0.1
    # / 0.25 / 0.5 / 1 / 2 gave 6 / 6 / 5 / 3 / 3 of 6 right orientations and 25.1 / 21.0 /
    # 14.3 / 11.3 / 10.7 dB (heaviest of 8 particles, digits test images 24-29, outside the
    # 24 that `dipswarm bench smc` scores)
    "pixel/phase_retrieval": Preset(
        overrides={"num_steps": 75, "inflation": 0.1},
        backbone="pixel",
        task="phase_retrieval",
        source="ours: inflation sweep on shipped digits phase retrieval (docs/solvers/tds.md)",
    ),
}
LATENT_TDS_PRESETS: dict[str, Preset] = {
    "gmm": Preset(
        overrides={**_GMM, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
        task="matrix",
        source=f"{_GMM_CHECK}; the pixel DDPM grid (the LDM grid stops below the mixture's spread)",
    ),
}


@register(presets=TDS_PRESETS)
class TDS(Solver):
    """Twisted diffusion sampler (Wu et al., NeurIPS 2023) for pixel-space priors."""

    name = "tds"
    config_class = TDSConfig
    latent = False
    weighted = True
    config: TDSConfig

    def __init__(self, config: TDSConfig | None = None) -> None:
        super().__init__(config)
        self.sigmas: list[float] = []

    @property
    def num_steps(self) -> int:
        return self.config.num_steps

    def noise_level(self, k: int) -> float:
        """s_{k+1}, the noise level of x after step ``k``."""
        return self.sigmas[k + 1]

    def denoised(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """x0_hat = D(x_k, s_k) in image space (decoded for Latent-TDS)."""
        assert self.prior is not None
        with torch.no_grad():
            return self._image(self.prior.denoise(x, self.sigmas[k]))

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        """Sampling space -> image space (the decoder for Latent-TDS)."""
        assert self.prior is not None
        return self.prior.decode(x) if self.latent else x

    def _init(
        self, generators: list[torch.Generator], indices: list[int], y: torch.Tensor
    ) -> State:
        prior, operator = self.prior, self.operator
        assert prior is not None and operator is not None
        dtype, device = prior.dtype, prior.device
        like = torch.zeros(len(indices), *prior.shape, dtype=dtype, device=device)
        with torch.no_grad():
            check_image_shape(self.name, self._image(like[:1]), operator)
        self.sigmas = prior_sigmas(self.config, prior)
        y = y.to(device=device, dtype=dtype)
        x = math.sqrt(1.0 + self.sigmas[0] ** 2) * particle_randn(generators, like)
        log_g, grad, denoised, image = self.twist(x, 0, operator, y)
        return State(
            x=x,
            x0=image,
            generators=generators,
            indices=indices,
            status=torch.zeros(len(indices), dtype=torch.long),
            extra={LOG_WEIGHT: log_g, TWIST: log_g, TWIST_GRAD: grad, DENOISED: denoised},
            y=y,
        )

    def _update(self, rows: Rows, k: int) -> Update:
        """The twisted move from s_k to s_{k+1} and its log incremental weight (module doc)."""
        s, s_next = self.sigmas[k], self.sigmas[k + 1]
        x, denoised = rows.x.detach(), rows.extra[DENOISED]
        log_g = rows.extra[TWIST]
        if s_next == 0:  # deterministic for p and q: x_K = x0_hat, weight p(y | x_K) / g_{K-1}
            log_lik = self.log_likelihood(rows.x0, rows.operator, rows.y)
            return Update(denoised, rows.x0, {TWIST: log_lik}, log_weight=log_lik - log_g)
        u = rows.extra[TWIST_GRAD]
        if rows.force is not None:
            u = u + rows.force.to(u)
        v = s_next**2 * (s**2 - s_next**2) / s**2
        mean = denoised + (s_next**2 / s**2) * (x - denoised)
        xi = particle_randn(rows.generators, x)
        x_next = mean + v * u + math.sqrt(v) * xi
        u64, xi64 = u.flatten(1).to(F64), xi.flatten(1).to(F64)
        log_p_over_q = -math.sqrt(v) * (xi64 * u64).sum(1) - 0.5 * v * u64.pow(2).sum(1)
        log_g_next, grad, denoised_next, image = self.twist(x_next, k + 1, rows.operator, rows.y)
        return Update(
            x_next,
            image,
            {TWIST: log_g_next, TWIST_GRAD: grad, DENOISED: denoised_next},
            log_weight=log_p_over_q + log_g_next - log_g,
        )

    # -- the twist and the likelihood ------------------------------------------------------------
    def noise_variance(self, operator: Operator, like: torch.Tensor) -> torch.Tensor:
        """sigma_y^2 per row of ``like`` (float64), each problem's own, at least min_noise^2."""
        floor = self.config.min_noise
        sigma = per_row(
            operator, {part: max(part.sigma, floor) for part, _ in operator.row_groups()}, like
        )
        out = torch.as_tensor(sigma, dtype=F64, device=like.device)
        return out.expand(like.shape[0]).pow(2)

    def twist(
        self, x: torch.Tensor, j: int, operator: Operator, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log g_j(x), grad_x log g_j(x), x0_hat = D(x, s_j), image(x0_hat)) per row, j < K.

        One denoiser call and one VJP; rows with a non-finite image get NaN twist and gradient.
        """
        prior = self.prior
        assert prior is not None
        s = self.sigmas[j]
        var = self.noise_variance(operator, x) + (self.config.inflation * s) ** 2
        log_g = torch.full((x.shape[0],), math.nan, dtype=F64, device=x.device)
        with torch.enable_grad():
            x_in = x.detach().clone().requires_grad_(True)
            denoised = prior.denoise(x_in, s)
            image = self._image(denoised)
            ok, residual = finite_residuals(operator, image, y)
            if residual is None:
                grad = torch.full_like(x, math.nan)
            else:
                value = self.config.twist_scale * _log_gaussian(residual, var[ok.to(var.device)])
                (grad,) = torch.autograd.grad(value.sum(), x_in)
                log_g[ok.to(log_g.device)] = value.detach()
                keep = ok.to(grad.device).view(-1, *([1] * (x.dim() - 1)))
                grad = torch.where(keep, grad, math.nan)
        return log_g, grad.detach(), denoised.detach(), image.detach()

    def log_likelihood(
        self, image: torch.Tensor, operator: Operator, y: torch.Tensor
    ) -> torch.Tensor:
        """log p(y | image) = log N(y; A(image), sigma_y^2 I) per row (NaN for non-finite)."""
        out = torch.full((image.shape[0],), math.nan, dtype=F64, device=image.device)
        with torch.no_grad():
            ok, residual = finite_residuals(operator, image, y)
            if residual is not None:
                var = self.noise_variance(operator, image)
                out[ok.to(out.device)] = _log_gaussian(residual, var[ok.to(var.device)])
        return out


@register(presets=LATENT_TDS_PRESETS)
class LatentTDS(TDS):
    """Latent-TDS: TDS in z, the twist through ``decode`` (as Latent-DPS is to DPS)."""

    name = "latent_tds"
    config_class = LatentTDSConfig
    latent = True


def _log_gaussian(residual: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """log N(0; r, var I) per row of the flattened residuals ``r``, in float64."""
    r = residual.to(F64)
    var = var.to(r.device)
    return -0.5 * r.pow(2).sum(1) / var - 0.5 * r.shape[1] * torch.log(2 * math.pi * var)
