"""DiffPIR: diffusion models as plug-and-play priors by half-quadratic splitting.

Zhu, Zhang, Liang, Cao, Wen, Timofte, Van Gool, "Denoising diffusion models for plug-and-play
image restoration", CVPR Workshops (NTIRE) 2023 (Algorithm 1; docs/solvers/diffpir.md), for
linear operators and pixel priors, in the EDM form of the prior contract.

Noise grid. A DDPM table abar_t (``beta_schedule`` from ``beta_start`` to ``beta_end`` over
``train_steps``), read as EDM levels sigma_t = sqrt((1 - abar_t) / abar_t) (the paper's
sigma-bar_t), at ``steps`` timesteps: ``skip_type = "quad"`` (the reference code's default)
takes t_i = T - 1 - min(floor(T sqrt(i / (N - 1))), T - 1), dense near the clean end;
``"uniform"`` takes t_i evenly from T - 1 down to 0. The levels, ordered sigma_0 > ... >
sigma_{N-1} and clamped into the prior's [sigma_min, sigma_max], end with sigma_N = 0. Start:
x_0 ~ N(0, (1 + sigma_0^2) I), the VE image of x_T ~ N(0, I).

Step k (s = sigma_k, s' = sigma_{k+1}), one denoiser call:

    x0 = D(x_k, s)                                            (prior sub-problem)
    rho = lambda sigma_y^2 / s^2
    x0_hat = argmin_x ||y - A x||^2 + rho ||x - x0||^2        (data sub-problem, by CG)
    eps_hat = (x_k - x0_hat) / s
    x_{k+1} = x0_hat + s' (sqrt(1 - zeta) eps_hat + sqrt(zeta) xi) + (s^2 - s'^2) force

with xi ~ N(0, I) from the particle's own generator. The data step is the operator's damped
least-squares solve ``pseudo_inverse(y, damping=rho, x0=x0)``: CG on (A^T A + rho I) x =
A^T y + rho x0 started at x0, per row with the row's own y and operator. With sigma_y = 0, rho
= 0 and it is the projection x0 + A^+ (y - A x0) (CG from x0 stays in x0 + range(A^T)).

VP equivalence. The paper's re-noising x_{t-1} = sqrt(abar') x0_hat + sqrt(1 - abar')
(sqrt(1 - zeta) eps_hat + sqrt(zeta) eps) with eps_hat = (x_t - sqrt(abar) x0_hat) /
sqrt(1 - abar) is the step above divided by sqrt(abar') (x_vp = x / sqrt(1 + sigma^2)), and
eps_hat is the same in both forms. zeta = 0 is DDIM on the corrected estimate, zeta = 1 draws
fresh noise. After the last step (s' = 0) the sample is x0_hat.

lambda's units. rho = lambda sigma_y^2 / sigma_t^2 is written here in one unit system, the
prior's. The reference code computes rho with sigma_y in [0, 1] pixel units while its images and
sigma_t are in [-1, 1] units, so its lambda is 4 times the lambda here for [-1, 1] images; the
presets below are converted.

``state.x0`` is x0_hat of the last step (the data-consistent estimate; the sample after the
last step). Before the first step it is zero (no network call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from operators import LinearOperator, Operator
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

PAPER = "DiffPIR (Zhu et al., CVPRW 2023)"
CODE = "DiffPIR reference code"
SKIP_TYPES = ("quad", "uniform")
CODE_LAMBDA_SCALE = 4.0  # the reference code's lambda over this module's, for [-1, 1] images


@dataclass(frozen=True)
class DiffPIRConfig(DDPMScheduleConfig):
    """DiffPIR hyperparameters; the DDPM table's from ``DDPMScheduleConfig``."""

    steps: int = hyper(100, 1, 10000, log=True, source=f"{PAPER}: 100 NFE (20 for inpainting)")
    lambda_: float = hyper(
        7.0 / CODE_LAMBDA_SCALE,
        1e-4,
        1e4,
        log=True,
        source=f"{CODE}, main_ddpir_deblur.py: lambda 7 (/ 4, module docstring)",
    )
    zeta: float = hyper(0.3, 0.0, 1.0, source=f"{CODE}, main_ddpir_deblur.py: zeta 0.3")
    skip_type: str = choice("quad", SKIP_TYPES, source=f"{CODE}: skip_type quad")
    cg_iters: int = hyper(30, 1, 1000, log=True, source="ours: CG of the data step")
    cg_tol: float = hyper(1e-6, 1e-14, 1e-1, log=True, source="ours: relative CG residual")
    beta_schedule: str = choice("linear", BETA_SCHEDULES, source=f"{CODE}: linear 1e-4 .. 0.02")

    orders = (
        *DDPMScheduleConfig.orders,
        Order("steps", "train_steps", why="the grid picks among the training timesteps"),
    )


def diffpir_timesteps(train_steps: int, steps: int, skip_type: str) -> torch.Tensor:
    """The ``steps`` table indices of the run, noisiest first, ending at 0."""
    if steps == 1:
        return torch.tensor([train_steps - 1])
    if skip_type == "uniform":
        return respace(train_steps, steps).flip(0)
    fraction = torch.arange(steps, dtype=torch.float64) / (steps - 1)
    seq = torch.floor(train_steps * fraction.sqrt()).long().clamp_max(train_steps - 1)
    seq[-1] = train_steps - 1
    return train_steps - 1 - seq


def diffpir_sigmas(config: DiffPIRConfig, prior: Prior) -> list[float]:
    """The ``steps + 1`` EDM levels of the run, clamped into the prior's range, ending at 0."""
    abar = alphas_cumprod(
        config.train_steps, config.beta_start, config.beta_end, config.beta_schedule
    )
    times = diffpir_timesteps(config.train_steps, config.steps, config.skip_type)
    sigmas = vp_sigmas(abar[times]).tolist()
    return [min(max(s, prior.sigma_min), prior.sigma_max) for s in sigmas] + [0.0]


def _code(lam: float, zeta: float, steps: int) -> dict[str, float | int]:
    """Overrides from the reference code's lambda (converted), zeta and step count."""
    return {"lambda_": lam / CODE_LAMBDA_SCALE, "zeta": zeta, "steps": steps}


# Presets: the reference code's task scripts (its lambda / 4, module docstring). Deblurring:
# main_ddpir_deblur.py runs lambda 7, zeta 0.3, 100 NFE (sigma_y 12.75 / 255). Inpainting:
# main_ddpir_inpainting.py and configs/inpaint.yaml, lambda 1, zeta 1, 20 NFE (noise-free).
# Super-resolution: main_ddpir_sisr.py sweeps lambda over 2..12 at zeta 0.25 and publishes no
# single value; the preset takes the middle of that range, 7 (as for deblurring).
# "gmm": mean SW / floor over 12 benchmark instances (300 samples, 50 steps): zeta 0.3 / 0.7 / 1
# gave 52.0 / 48.5 / 44.8; lambda 0.1 / 1 / 10 at zeta 1 gave 44.8 / 44.8 / 47.5 (with sigma_y ~
# 0.1-0.3 and sigma_t up to 157 the data step is nearly a projection for most of the run).
DIFFPIR_PRESETS: dict[str, Preset] = {
    "pixel/gaussian_blur": Preset(
        overrides=_code(7.0, 0.3, 100),
        backbone="pixel",
        task="gaussian_blur",
        source=f"{CODE}, main_ddpir_deblur.py: lambda 7, zeta 0.3, 100 NFE",
    ),
    "pixel/motion_blur": Preset(
        overrides=_code(7.0, 0.3, 100),
        backbone="pixel",
        task="motion_blur",
        source=f"{CODE}, main_ddpir_deblur.py (blur_mode motion): lambda 7, zeta 0.3, 100 NFE",
    ),
    "pixel/super_resolution": Preset(
        overrides=_code(7.0, 0.25, 100),
        backbone="pixel",
        task="super_resolution",
        source=f"{CODE}, main_ddpir_sisr.py: zeta 0.25; lambda 7, the middle of its sweep 2..12",
    ),
    "pixel/inpaint_box": Preset(
        overrides=_code(1.0, 1.0, 20),
        backbone="pixel",
        task="inpaint_box",
        source=f"{CODE}, main_ddpir_inpainting.py: lambda 1, zeta 1, 20 NFE",
    ),
    "pixel/inpaint_random": Preset(
        overrides=_code(1.0, 1.0, 20),
        backbone="pixel",
        task="inpaint_random",
        source=f"{CODE}, main_ddpir_inpainting.py: lambda 1, zeta 1, 20 NFE",
    ),
    "gmm": Preset(
        overrides={"steps": 50, "lambda_": 1.0, "zeta": 1.0, "cg_iters": 10},
        task="matrix",
        source="GMM benchmark sweep of zeta and lambda at 50 steps (docs/solvers/diffpir.md)",
    ),
}


@register(presets=DIFFPIR_PRESETS)
class DiffPIR(Solver):
    """DiffPIR (Zhu et al., CVPRW 2023): HQS with a diffusion denoiser, linear operators."""

    name = "diffpir"
    config_class = DiffPIRConfig
    latent = False
    linear_only = True
    config: DiffPIRConfig

    def __init__(self, config: DiffPIRConfig | None = None) -> None:
        super().__init__(config)
        self.sigmas: list[float] = []

    @property
    def num_steps(self) -> int:
        return self.config.steps

    def noise_level(self, k: int) -> float:
        """sigma_{k+1}, the noise level of x after step ``k``."""
        return self.sigmas[k + 1]

    def denoised(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """x0 = D(x_k, sigma_k), before the data step."""
        assert self.prior is not None
        return self.prior.denoise(x, self.sigmas[k])

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
        self.sigmas = diffpir_sigmas(self.config, prior)
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
        """Denoise, data step, re-noise to the next level (module docstring)."""
        prior = self.prior
        assert prior is not None
        s, s_next = self.sigmas[k], self.sigmas[k + 1]
        zeta = self.config.zeta
        with torch.no_grad():
            x = rows.x
            x0 = prior.denoise(x, s)
            broken = bad_rows(x0)
            x0_hat = self.data_step(zero_rows(x0, broken), s, rows.y, rows.operator)
            x_next = x0_hat + s_next * math.sqrt(1.0 - zeta) * (x - x0_hat) / s
            if s_next > 0 and zeta > 0:
                x_next = x_next + s_next * math.sqrt(zeta) * particle_randn(rows.generators, x)
            if rows.force is not None:
                x_next = x_next + (s**2 - s_next**2) * rows.force.to(x_next)
            at = broken.view(-1, *([1] * (x.dim() - 1)))
            x_next = torch.where(at, math.nan, x_next)
            x0_hat = torch.where(at, math.nan, x0_hat)
        return Update(x_next, x0_hat)

    def rho(self, sigma: float, operator: Operator) -> float:
        """rho = lambda sigma_y^2 / sigma^2, the weight of ||x - x0||^2 in the data step."""
        return self.config.lambda_ * operator.sigma**2 / sigma**2

    def data_step(
        self, x0: torch.Tensor, sigma: float, y: torch.Tensor, operator: Operator
    ) -> torch.Tensor:
        """argmin_x ||y - A x||^2 + rho ||x - x0||^2 per row, by CG started at x0."""
        assert isinstance(operator, LinearOperator)
        y_rows = y.expand(x0.shape[0], *y.shape[1:])
        return operator.pseudo_inverse(
            y_rows,
            damping=self.rho(sigma, operator),
            x0=x0,
            tol=self.config.cg_tol,
            max_iter=self.config.cg_iters,
        )

    def check_problem(self, prior: Prior, operator: Operator, y: torch.Tensor) -> None:
        super().check_problem(prior, operator, y)
        if not isinstance(operator, LinearOperator):
            raise SolverInputError(
                f"{self.name} needs a LinearOperator (its data step solves (A^T A + rho I) x = "
                f"A^T y + rho x0 by CG); {operator.name} is not one: use dps, daps or resample "
                "for nonlinear operators"
            )
