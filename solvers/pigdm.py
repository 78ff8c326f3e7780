"""PiGDM: pseudoinverse-guided diffusion (Song, Vahdat, Mardani, Kautz, ICLR 2023).

"Pseudoinverse-guided diffusion models for inverse problems" (docs/solvers/pigdm.md), for linear
operators with Gaussian noise (the paper's noisy case) and pixel priors, in the EDM form of the
prior contract.

Noise grid. As DPS (solvers/dps.py): the levels of a DDPM schedule (``beta_schedule`` from
``beta_start`` to ``beta_end`` over ``train_steps``), sigma_t = sqrt((1 - abar_t) / abar_t),
respaced to ``steps`` timesteps, ordered sigma_0 > ... > sigma_{N-1}, then sigma_N = 0, with
the positive levels clamped into the prior's [sigma_min, sigma_max]. Start: x_0 ~ N(0, (1 +
sigma_0^2) I), the VE image of the DDPM start x_T ~ N(0, I).

Step k (s = sigma_k, s' = sigma_{k+1}), one denoiser call and one vector-Jacobian product:

    x0_hat = D(x_k, s),                          J = d x0_hat / d x_k
    r^2 = s^2 c^2 / (s^2 + c^2)                  (c = ``data_std``; the paper's c = 1)
    u = (r^2 A A^T + sigma_y^2 I)^-1 (y - A x0_hat)       (CG in measurement space)
    x0_y = x0_hat + w a J^T A^T u                (w = ``guidance``; a = r^2 or s^2, below)
    eps = (x_k - x0_y) / s,   c_k = eta s' sqrt(s^2 - s'^2) / s
    x_{k+1} = x0_y + sqrt(s'^2 - c_k^2) eps + c_k xi + (s^2 - s'^2) force

with xi ~ N(0, I) from the particle's own generator; A A^T is applied matrix-free (``adjoint``
then forward) and the batched CG runs per row with the row's own y and operator.

Why this form. PiGDM approximates p(x0 | x_t) by N(x0_hat, r_t^2 I), so p(y | x_t) is
N(A x0_hat, r_t^2 A A^T + sigma_y^2 I) and its score in x_t is J^T A^T u (the paper's eq. 7).
Tweedie's formula for the conditional, E[x0 | x_t, y] = x_t + s^2 grad log p(x_t | y), turns that
score into the correction s^2 J^T A^T u of the clean estimate (``weighting = "tweedie"``, a =
s^2); the DDIM step (Song et al. 2021) is then taken with the corrected estimate, i.e. with the
conditional score. For a Gaussian prior N(m, c^2 I) with ``data_std`` c and w = 1, x0_y is then
exactly E[x0 | x_t, y] (tests/test_pigdm.py). ``weighting = "r2"`` (default), a = r^2, is the
paper's guidance vector g = J^T A^T (r^2 A A^T + sigma_y^2 I)^-1 r^2 (y - A x0_hat), which for
noise-free y is J^T A^+ (y - A x0_hat), the pseudoinverse form of its Algorithm 1: the score
weighted by r_t^2. The Tweedie factor s^2 trusts J: with a trained network, whose Jacobian at
large s is not the Gaussian c^2 / (c^2 + s^2), it diverged on the digits prior (measured
||A x - y||^2 ~ 1e14 on 4x super-resolution), and r^2 <= c^2 keeps the correction bounded.

r_t^2 in EDM form. The paper picks r_t^2 = sigma_t^2 / (1 + sigma_t^2), the variance of
p(x0 | x_t) when the data are N(0, I), with sigma_t the VE noise level of the VP state
(sigma_t^2 = (1 - abar_t) / abar_t, so r_t^2 = 1 - abar_t). The clean estimate x0_hat is the
same in the VP and VE parametrisations, so its variance is too: in EDM form r^2 = s^2 / (1 + s^2)
with the EDM level s. ``data_std`` c generalises it to data N(0, c^2 I): r^2 = s^2 c^2 / (s^2 +
c^2) (c = 1 is the paper; c = 0.5 is EDM's sigma_data for images in [-1, 1]).

VP equivalence. With x_vp = x / sqrt(1 + s^2), J_vp = sqrt(1 + s^2) J, so the correction is
(1 - abar_t) / sqrt(abar_t) J_vp^T A^T u, the DDIM x0 update of the conditional score
grad_{x_vp} log p(y | x_vp); eta = 1 is the DDPM ancestral step, eta = 0 DDIM.

``state.x0`` is the corrected estimate x0_y of the last step, and the final sample x_N after the
last step (s' = 0, where x_N = x0_y). Before the first step it is zero (no network call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from operators import LinearOperator, Operator
from operators.linalg import cg
from solvers.base import Rows, Solver, SolverInputError, State, Update, particle_randn
from solvers.config import Order, choice, hyper
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
from solvers.vp_grid import bad_rows, zero_rows

PAPER = "PiGDM (Song et al., ICLR 2023)"
WEIGHTINGS = ("r2", "tweedie")


@dataclass(frozen=True)
class PiGDMConfig(DDPMScheduleConfig):
    """PiGDM hyperparameters; the DDPM table's from ``DDPMScheduleConfig``."""

    steps: int = hyper(
        100, 1, 10000, log=True, source=f"{PAPER}: 100 DDIM steps on ImageNet / FFHQ"
    )
    eta: float = hyper(1.0, 0.0, 1.0, source="DDIM eta (1: DDPM ancestral step, 0: DDIM)")
    guidance: float = hyper(
        1.0, 1e-3, 100.0, log=True, source="ours: 1 = the unscaled correction a J^T A^T u"
    )
    data_std: float = hyper(
        1.0, 1e-3, 1e3, log=True, source=f"{PAPER}: r_t^2 = sigma_t^2 / (1 + sigma_t^2), c = 1"
    )
    weighting: str = choice(
        "r2",
        WEIGHTINGS,
        source=f"r2: {PAPER} g = J^T A^+ (y - A x0_hat) (noise-free); tweedie: s^2, exact for "
        "a Gaussian prior",
    )
    cg_iters: int = hyper(20, 1, 1000, log=True, source="ours: CG on r^2 AA^T + sigma_y^2 I")
    cg_tol: float = hyper(1e-6, 1e-14, 1e-1, log=True, source="ours: relative CG residual")
    beta_schedule: str = choice("linear", BETA_SCHEDULES, source="DDPM linear (ADM)")

    orders = (
        *DDPMScheduleConfig.orders,
        Order("steps", "train_steps", why="the grid respaces the training timesteps"),
    )


def pigdm_sigmas(config: PiGDMConfig, prior: Prior) -> list[float]:
    """The ``steps + 1`` decreasing EDM levels of the respaced DDPM table, clamped into the
    prior's [sigma_min, sigma_max], ending at 0."""
    abar = alphas_cumprod(
        config.train_steps, config.beta_start, config.beta_end, config.beta_schedule
    )
    sigmas = vp_sigmas(abar[respace(config.train_steps, config.steps)]).flip(0).tolist()
    return [min(max(s, prior.sigma_min), prior.sigma_max) for s in sigmas] + [0.0]


# Presets. The paper publishes no per-task guidance weights (its correction is the likelihood
# score itself). "gmm": the mixture's coordinates spread over {-16, ..., 16}, far from the
# paper's unit data variance; mean SW / floor over 12 benchmark instances (300 samples, 50
# steps), tweedie weighting: data_std 1 / 3 / 5 gave 25.9 / 12.3 / 12.4 (data_std 1 worse than
# the prior on one instance), eta 0.5 with data_std 3 gave 11.0, guidance 0.5 gave 18.0; the r2
# weighting under-corrects there (data_std 3 / 10: 61.8 / 60.4).
# Inpainting on the shipped digits prior (2 test images, 50 steps, image-task geometry and
# sigma_y 0.05): guidance 1 leaves the data unfitted (random pixels: ||Ax - y||^2 13.3, 17.2 dB);
# random pixels: guidance 10 gave 25.9 dB, 30 diverged; box: guidance 3 / 5 / 10 gave 15.5 /
# 14.9 / 5.5 dB (diverged). Super-resolution and deblurring need no scale (guidance 1: 30.3,
# 38.8, 39.6 dB on one image).
_DIGITS = "digits image-task sweep of guidance (2 images, 50 steps; docs/solvers/pigdm.md)"
PIGDM_PRESETS: dict[str, Preset] = {
    "pixel/inpaint_random": Preset(
        overrides={"guidance": 10.0}, backbone="pixel", task="inpaint_random", source=_DIGITS
    ),
    "pixel/inpaint_box": Preset(
        overrides={"guidance": 3.0}, backbone="pixel", task="inpaint_box", source=_DIGITS
    ),
    "gmm": Preset(
        overrides={
            "steps": 50,
            "weighting": "tweedie",
            "data_std": 3.0,
            "eta": 0.5,
            "cg_iters": 10,
        },
        task="matrix",
        source="GMM benchmark sweep of weighting, data_std, eta and guidance at 50 steps",
    ),
}


@register(presets=PIGDM_PRESETS)
class PiGDM(Solver):
    """Pseudoinverse-guided diffusion (Song et al., ICLR 2023): linear operators, pixel priors."""

    name = "pigdm"
    config_class = PiGDMConfig
    latent = False
    linear_only = True
    config: PiGDMConfig

    def __init__(self, config: PiGDMConfig | None = None) -> None:
        super().__init__(config)
        self.sigmas: list[float] = []

    @property
    def num_steps(self) -> int:
        return self.config.steps

    def noise_level(self, k: int) -> float:
        """sigma_{k+1}, the noise level of x after step ``k``."""
        return self.sigmas[k + 1]

    def denoised(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """x0_hat = D(x_k, sigma_k) (without the guidance correction)."""
        assert self.prior is not None
        return self.prior.denoise(x, self.sigmas[k])

    def posterior_variance(self, sigma: float) -> float:
        """r^2 = sigma^2 c^2 / (sigma^2 + c^2), PiGDM's variance of p(x0 | x) (c = data_std)."""
        c2 = self.config.data_std**2
        return sigma**2 * c2 / (sigma**2 + c2)

    def _init(
        self, generators: list[torch.Generator], indices: list[int], y: torch.Tensor
    ) -> State:
        prior, operator = self.prior, self.operator
        assert prior is not None and operator is not None
        if tuple(prior.shape) != operator.input_shape:
            raise SolverInputError(
                f"{self.name}: the prior's images have shape {tuple(prior.shape)} but "
                f"{operator.name} acts on {operator.input_shape}"
            )
        self.sigmas = pigdm_sigmas(self.config, prior)
        zeros = torch.zeros(len(indices), *prior.shape, dtype=prior.dtype, device=prior.device)
        x = math.sqrt(1.0 + self.sigmas[0] ** 2) * particle_randn(generators, zeros)
        return State(
            x=x,
            x0=zeros,
            generators=generators,
            indices=indices,
            status=torch.zeros(len(indices), dtype=torch.long),
            y=y.to(device=x.device, dtype=x.dtype),
        )

    def _update(self, rows: Rows, k: int) -> Update:
        """One guided DDIM step (module docstring)."""
        s, s_next = self.sigmas[k], self.sigmas[k + 1]
        x = rows.x.detach()
        x0 = self.guided_estimate(x, s, rows.y, rows.operator)
        with torch.no_grad():
            c = self.config.eta * s_next * math.sqrt(max(s**2 - s_next**2, 0.0)) / s
            x_next = x0 + math.sqrt(max(s_next**2 - c**2, 0.0)) * (x - x0) / s
            if c > 0:
                x_next = x_next + c * particle_randn(rows.generators, x)
            if rows.force is not None:
                x_next = x_next + (s**2 - s_next**2) * rows.force.to(x_next)
        return Update(x_next, x_next if s_next == 0 else x0)

    def guided_estimate(
        self, x: torch.Tensor, sigma: float, y: torch.Tensor, operator: Operator
    ) -> torch.Tensor:
        """x0_y = x0_hat + w a J^T A^T (r^2 A A^T + sigma_y^2 I)^-1 (y - A x0_hat) (a = r^2 or
        sigma^2 by ``weighting``) of the rows ``x`` at level ``sigma`` with their ``y`` and
        ``operator``; NaN rows where the denoiser failed."""
        prior = self.prior
        assert prior is not None and isinstance(operator, LinearOperator)
        r2, noise2 = self.posterior_variance(sigma), operator.sigma**2
        with torch.enable_grad():
            x_in = x.detach().clone().requires_grad_(True)
            x0 = prior.denoise(x_in, sigma)
            broken = bad_rows(x0.detach())
            safe = zero_rows(x0.detach(), broken)
            with torch.no_grad():
                residual = y - operator(safe)

                def covariance(v: torch.Tensor) -> torch.Tensor:
                    return r2 * operator(operator.adjoint(v)) + noise2 * v

                u = cg(covariance, residual, tol=self.config.cg_tol, max_iter=self.config.cg_iters)
                direction = zero_rows(operator.adjoint(u), broken)
            (vjp,) = torch.autograd.grad(x0, x_in, grad_outputs=direction)
        scale = r2 if self.config.weighting == "r2" else sigma**2
        corrected = safe + self.config.guidance * scale * vjp
        rows = broken.view(-1, *([1] * (x.dim() - 1)))
        return torch.where(rows, math.nan, corrected.detach())

    def check_problem(self, prior: Prior, operator: Operator, y: torch.Tensor) -> None:
        super().check_problem(prior, operator, y)
        if not isinstance(operator, LinearOperator):
            raise SolverInputError(
                f"{self.name} needs a LinearOperator (adjoint for J^T A^T and A A^T); "
                f"{operator.name} is not one: use dps, daps or resample for nonlinear operators"
            )
