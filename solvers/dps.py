"""DPS and Latent-DPS in the EDM form of the prior contract.

DPS: Chung et al., "Diffusion posterior sampling for general noisy inverse problems", ICLR 2023
(Algorithm 1). Latent-DPS: the same in a latent space through the decoder, as defined and run
as a baseline in ReSample (Song et al., "Solving inverse problems with latent diffusion
models via hard data consistency", ICLR 2024, eq. 8-9 and App. C.3).

Noise grid. The levels are those of a DDPM schedule (``beta_schedule`` from ``beta_start`` to
``beta_end`` over ``train_steps``), sigma_t = sqrt((1 - abar_t) / abar_t), respaced to
``num_steps`` timesteps t_j = round(j (T - 1) / (N - 1)) as guided-diffusion's
``space_timesteps`` does, ordered sigma_0 > ... > sigma_{N-1}, then sigma_N = 0; levels outside
the prior's [sigma_min, sigma_max] are clamped into it. Start: x_0 ~ N(0, (1 + sigma_0^2) I),
the VE image of the DDPM start x_T ~ N(0, I).

Step k (s = sigma_k, s' = sigma_{k+1}), one denoiser call with gradient:

    x0_hat = D(x_k, s),  r = y - A(x0_hat)           (A(decode(x0_hat)) for Latent-DPS)
    c = eta s' sqrt(s^2 - s'^2) / s,  eps_hat = (x_k - x0_hat) / s
    x_{k+1} = x0_hat + sqrt(s'^2 - c^2) eps_hat + c xi
              - zeta_k sqrt((1 + s^2)(1 + s'^2)) grad_{x_k} ||r||_2
              + (s^2 - s'^2) force

with xi ~ N(0, I) from the particle's own generator and ||r|| the norm of that particle's
residual only, with its own y and operator when the batch holds several problems (the reference
code normalises by the norm over the whole batch, which couples the particles; here batch items
never interact). ``step_rule = "constant"``: zeta_k = zeta, the
``scale`` of the reference code, i.e. the paper's zeta_i = zeta' / ||r|| on grad ||r||^2 with
zeta' = zeta / 2. ``step_rule = "alpha_bar"``: zeta_k = zeta abar_k, abar_k = 1 / (1 + s^2)
(ReSample's Latent-DPS choice, zeta = 0.5 for natural images).

Equivalence with DDPM. With x_vp = x / sqrt(1 + sigma^2) and abar = 1 / (1 + sigma^2), eta = 1
gives exactly the DDPM ancestral step with the posterior variance beta~ (Ho et al. 2020, eq. 7):
x0_hat + (s'^2 / s^2)(x_k - x0_hat) + (s' / s) sqrt(s^2 - s'^2) xi is the VE image of
sqrt(abar') beta / (1 - abar) x0_hat + sqrt(alpha)(1 - abar') / (1 - abar) x_vp + sigma~ xi;
eta = 0 gives DDIM (Song et al. 2021). The factor sqrt((1 + s^2)(1 + s'^2)) makes the
correction the VE image of the reference's x_vp' - zeta_k grad_{x_vp} ||r||, so a zeta tuned on
a DDPM network transfers unchanged. ``force`` is an extra log-density gradient added to the
prior score: the ancestral mean is x_k + (s^2 - s'^2) score(x_k), so it moves x by
(s^2 - s'^2) force.

``state.x0`` is the clean estimate of the last step (x0_hat, decoded for Latent-DPS), and after
the final step (s' = 0) the final sample x_N (decoded). Before the first step it is the image of
the zero state (no network call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from operators import Operator
from solvers.base import (
    Rows,
    Solver,
    SolverInputError,
    State,
    Update,
    finite_residuals,
    particle_randn,
)
from solvers.config import Order, choice, hyper
from solvers.preset import Preset
from solvers.priors.base import Prior
from solvers.registry import register
from solvers.schedules import (
    BETA_SCHEDULES,
    DDPMScheduleConfig,
    alphas_cumprod,
    beta_end_field,
    beta_start_field,
    respace,
    vp_sigmas,
)

STEP_RULES = ("constant", "alpha_bar")


@dataclass(frozen=True)
class DPSConfig(DDPMScheduleConfig):
    """Hyperparameters of DPS (pixel priors); the DDPM table's from ``DDPMScheduleConfig``."""

    num_steps: int = hyper(
        1000, 1, 10000, log=True, source="DPS paper and code: 1000 DDPM ancestral steps"
    )
    zeta: float = hyper(
        1.0,
        1e-3,
        100.0,
        log=True,
        source="DPS code `scale` (configs/*.yaml: 0.3 SR/deblur, 0.5 inpainting, 1.0 phase)",
    )
    step_rule: str = choice(
        "constant",
        STEP_RULES,
        source="constant: DPS code; alpha_bar: ReSample App. C.3 (zeta_t = k abar_t)",
    )
    eta: float = hyper(1.0, 0.0, 1.0, source="1: DDPM ancestral step (DPS); 0: DDIM")
    beta_schedule: str = choice(
        "linear", BETA_SCHEDULES, source="DDPM linear (ADM / DPS); scaled_linear for LDM"
    )

    orders = (
        *DDPMScheduleConfig.orders,
        Order("num_steps", "train_steps", why="the grid respaces the training timesteps"),
    )


@dataclass(frozen=True)
class LatentDPSConfig(DPSConfig):
    """Latent-DPS as run in ReSample (App. C.3): 500 DDIM steps, zeta_t = 0.5 abar_t."""

    num_steps: int = hyper(500, 1, 10000, log=True, source="ReSample App. C.3: T = 500 DDIM")
    zeta: float = hyper(
        0.5, 1e-3, 100.0, log=True, source="ReSample App. C.3: zeta_t = 0.5 abar_t (natural images)"
    )
    step_rule: str = choice("alpha_bar", STEP_RULES, source="ReSample App. C.3")
    eta: float = hyper(0.0, 0.0, 1.0, source="ReSample: DDIM, eta = 0")
    beta_schedule: str = choice(
        "scaled_linear", BETA_SCHEDULES, source="LDM FFHQ config (docs/solvers/dps.md)"
    )
    beta_start: float = beta_start_field(0.0015, source="LDM FFHQ: linear_start")
    beta_end: float = beta_end_field(0.0195, source="LDM FFHQ: linear_end")


def ddpm_sigmas(config: DPSConfig) -> list[float]:
    """The ``num_steps + 1`` decreasing VE levels of the respaced DDPM schedule, ending at 0."""
    abar = alphas_cumprod(
        config.train_steps, config.beta_start, config.beta_end, config.beta_schedule
    )
    sigmas = vp_sigmas(abar[respace(config.train_steps, config.num_steps)]).flip(0)
    return [*sigmas.tolist(), 0.0]


def prior_sigmas(config: DPSConfig, prior: Prior) -> list[float]:
    """``ddpm_sigmas`` with the positive levels clamped into the prior's [sigma_min, sigma_max]."""
    lo, hi = prior.sigma_min, prior.sigma_max
    return [min(max(s, lo), hi) for s in ddpm_sigmas(config)[:-1]] + [0.0]


def check_image_shape(name: str, image: torch.Tensor, operator: Operator) -> None:
    """Refuse a prior whose images (a batch ``image``) do not fit the operator's input."""
    if tuple(image.shape[1:]) != operator.input_shape:
        raise SolverInputError(
            f"{name}: the prior's images have shape {tuple(image.shape[1:])} but "
            f"{operator.name} acts on {operator.input_shape}"
        )


# Presets. Sources: the DPS reference code's task configs (DPS2022/diffusion-posterior-sampling,
# configs/*_config.yaml, `scale`, FFHQ 256, sigma_y 0.05; its phase-retrieval and Gaussian-deblur
# configs use Poisson noise), ReSample App. C.3 for Latent-DPS. "gmm": the MCGdiff benchmark
# (docs/gmm_benchmark.md); zeta = 0.2 had the lowest mean sliced Wasserstein distance over d in
# {8, 80}, d_y in {1, 2, 4}, instances 0 and 1 among zeta in {0.1, 0.2, 0.3, 0.5, 1, 2, 3} at
# 200 steps (1000 steps were not better); the latent preset reuses it with the pixel DDPM grid
# (the LDM grid stops at sigma 14.6, below the spread of the mixture).
_DPS_CODE = "DPS reference code, the task's config `scale` (FFHQ 256, sigma_y 0.05)"
_DPS_ZETA = {
    "super_resolution": 0.3,
    "inpaint_box": 0.5,
    "inpaint_random": 0.5,
    "gaussian_blur": 0.3,
    "motion_blur": 0.3,
    "nonlinear_blur": 0.3,
    "phase_retrieval": 1.0,
}
_GMM_SWEEP = "GMM benchmark sweep of zeta at 200 steps (docs/gmm_benchmark.md)"
DPS_PRESETS: dict[str, Preset] = {
    **{
        f"pixel/{task}": Preset(
            overrides={"zeta": zeta},
            backbone="pixel",
            task=task,
            source=_DPS_CODE,
        )
        for task, zeta in _DPS_ZETA.items()
    },
    "gmm": Preset(overrides={"num_steps": 200, "zeta": 0.2}, task="matrix", source=_GMM_SWEEP),
    # 100 denoiser calls per sample, the SMC samplers' budget in `dipswarm bench smc`: `dipswarm
    # tune experiments/configs/tune_gmm_nfe100_dps.yaml` (16 TPE trials, tuning instances
    # 10000-10003 at d = 8, d_y = 2; mean SW 2.47)
    "gmm_nfe100": Preset(
        overrides={"num_steps": 100, "zeta": 0.50, "eta": 0.15},
        task="matrix",
        source="dipswarm tune experiments/configs/tune_gmm_nfe100_dps.yaml",
    ),
}
LATENT_DPS_PRESETS: dict[str, Preset] = {
    "ldm/natural": Preset(
        overrides={}, backbone="latent", source="ReSample App. C.3 (natural images): defaults"
    ),
    "ldm/ct": Preset(
        overrides={"zeta": 2.5, "num_steps": 1000},
        backbone="latent",
        source="ReSample App. C.3 (CT)",
    ),
    "gmm": Preset(
        overrides={
            "num_steps": 200,
            "zeta": 0.2,
            "step_rule": "constant",
            "eta": 1.0,
            "beta_schedule": "linear",
            "beta_start": 1e-4,
            "beta_end": 0.02,
        },
        task="matrix",
        source=f"{_GMM_SWEEP}, the pixel DPS grid",
    ),
}


@register(presets=DPS_PRESETS)
class DPS(Solver):
    """Diffusion posterior sampling (Chung et al., ICLR 2023) for pixel-space priors."""

    name = "dps"
    config_class = DPSConfig
    latent = False

    def __init__(self, config: DPSConfig | None = None) -> None:
        super().__init__(config)
        self.sigmas: list[float] = []

    @property
    def num_steps(self) -> int:
        return self.config.num_steps

    def noise_level(self, k: int) -> float:
        """sigma_{k+1}, the noise level of x after step ``k``."""
        return self.sigmas[k + 1]

    def denoised(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """x0_hat = D(x_k, sigma_k) in image space (decoded for Latent-DPS)."""
        assert self.prior is not None
        return self._image(self.prior.denoise(x, self.sigmas[k]))

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        """Sampling space -> image space (the decoder for Latent-DPS)."""
        assert self.prior is not None
        return self.prior.decode(x) if self.latent else x

    def _init(
        self, generators: list[torch.Generator], indices: list[int], y: torch.Tensor
    ) -> State:
        prior, operator = self.prior, self.operator
        assert prior is not None and operator is not None
        dtype, device = prior.dtype, prior.device
        zeros = torch.zeros(len(indices), *prior.shape, dtype=dtype, device=device)
        with torch.no_grad():
            x0 = self._image(zeros)
        check_image_shape(self.name, x0, operator)
        self.sigmas = prior_sigmas(self.config, prior)
        x = math.sqrt(1.0 + self.sigmas[0] ** 2) * particle_randn(generators, zeros)
        return State(
            x=x,
            x0=x0,
            generators=generators,
            indices=indices,
            status=torch.zeros(len(indices), dtype=torch.long),
            y=y.to(device=device, dtype=dtype),
        )

    def _update(self, rows: Rows, k: int) -> Update:
        """One ancestral step with the DPS correction (module docstring)."""
        prior = self.prior
        assert prior is not None
        s, s_next = self.sigmas[k], self.sigmas[k + 1]
        cfg = self.config
        x = rows.x.detach()
        with torch.enable_grad():
            x_in = x.clone().requires_grad_(True)
            x0 = prior.denoise(x_in, s)
            image = self._image(x0)
            correction = self._correction(rows, x_in, x0, image, k)
        with torch.no_grad():
            x0 = x0.detach()
            c = cfg.eta * s_next * math.sqrt(max(s**2 - s_next**2, 0.0)) / s
            x_next = x0 + math.sqrt(max(s_next**2 - c**2, 0.0)) * (x - x0) / s
            if c > 0:
                x_next = x_next + c * particle_randn(rows.generators, x)
            x_next = x_next - correction
            if rows.force is not None:
                x_next = x_next + (s**2 - s_next**2) * rows.force.to(x_next)
            x0_next = self._image(x_next) if s_next == 0 else image.detach()
        return Update(x_next, x0_next)

    def vp_scale(self, k: int) -> float:
        """sqrt((1 + s^2)(1 + s'^2)): a gradient step on x_vp, taken on the VE state x."""
        s, s_next = self.sigmas[k], self.sigmas[k + 1]
        return math.sqrt((1.0 + s**2) * (1.0 + s_next**2))

    def _correction(
        self, rows: Rows, x_in: torch.Tensor, x0: torch.Tensor, image: torch.Tensor, k: int
    ) -> torch.Tensor:
        """The guidance subtracted from the ancestral step: zeta_k sqrt((1 + s^2)(1 + s'^2))
        grad_{x_k} ||r|| (module docstring); ``x0`` = D(x_in), ``image`` its image. It runs with
        grad enabled and is the last use of the graph (subclasses add terms before it)."""
        cfg, s = self.config, self.sigmas[k]
        zeta = cfg.zeta / (1.0 + s**2) if cfg.step_rule == "alpha_bar" else cfg.zeta
        grad_norm = _residual_norm_grad(rows.operator, image, rows.y, x_in)
        return (zeta * self.vp_scale(k)) * grad_norm


@register(presets=LATENT_DPS_PRESETS)
class LatentDPS(DPS):
    """Latent-DPS (ReSample, Song et al., ICLR 2024, eq. 8-9): DPS in z through ``decode``."""

    name = "latent_dps"
    config_class = LatentDPSConfig
    latent = True


def _residual_norm_grad(
    operator: Operator, image: torch.Tensor, y: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """grad_x ||y - A(image_i)||_2 per particle; rows with a non-finite image get NaN.

    ``y`` and ``operator`` are those of the batch's rows (per row for several problems). The
    squared residuals are summed over particles, so each row of the gradient holds only its
    own particle's term; dividing J^T r by that particle's ||r|| gives the gradient of the norm
    (0 where r = 0).
    """
    ok, residual = finite_residuals(operator, image, y)
    if residual is None:
        return torch.full_like(x, float("nan"))
    sq = residual.pow(2).sum(1)
    (grad,) = torch.autograd.grad(0.5 * sq.sum(), x)
    norm = torch.full((x.shape[0],), float("nan"), dtype=x.dtype, device=x.device)
    norm[ok] = sq.detach().sqrt()
    inv = torch.where(norm > 0, 1.0 / norm, torch.zeros_like(norm))
    inv = torch.where(ok, inv, torch.full_like(inv, float("nan")))
    return grad * inv.view(-1, *([1] * (x.dim() - 1)))
