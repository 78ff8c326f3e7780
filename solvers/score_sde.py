"""Score-SDE projection for linear operators (pixel priors), and the base of MCG and ILVR.

Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole, "Score-based generative modeling through
stochastic differential equations", ICLR 2021 (App. I.2, imputation: replace the observed part of
each reverse-step sample by a sample of the forward-diffused measurement), with the projection
weight lambda of Song, Shen, Xing, Ermon, "Solving inverse problems in medical imaging with
score-based generative models", ICLR 2022. ``ProjectionSolver`` is the chain shared with MCG
(``solvers/mcg.py``, a gradient step before the projection) and ILVR (``solvers/ilvr.py``, the
projection restricted to super-resolution).

VE form. The state is the VE variable x_k = x0 + s_k n on the respaced DDPM grid of DPS
(``solvers.dps.prior_sigmas``): s_0 > ... > s_N = 0, start x_0 ~ N(0, (1 + s_0^2) I). The
papers' VP measurement y_i = sqrt(abar_i) y + sqrt(1 - abar_i) A eps is, divided by
sqrt(abar_i) like the VP state, y_i = y + s_i A eps with s_i^2 = (1 - abar_i) / abar_i; the
projection is the same map in either form.

Step k (s = s_k, s' = s_{k+1}), one denoiser call:

    x0_hat = D(x_k, s)
    x' = x0_hat + (s'^2 / s^2)(x_k - x0_hat) + (s' / s) sqrt(s^2 - s'^2) xi + (s^2 - s'^2) force
    x' = x' - sqrt((1 + s^2)(1 + s'^2)) g          (a guidance direction g: MCG only)
    y' = y + s' A eps
    x_{k+1} = x' + lambda A^+ (y' - A x')

The second line is the DDPM ancestral step in EDM form (``solvers/dps.py``, eta = 1); ``force``
is an extra log-density gradient added to the prior score. A^+ is the operator's minimum-norm
pseudo-inverse by CG on the normal equations (``LinearOperator.pseudo_inverse``, ``cg_iters``
iterations at most): with lambda = 1 and converged CG, A x_{k+1} = y' exactly and the null
space of A keeps the prior's step; for inpainting it is the replacement of the observed pixels
(one CG iteration). eps ~ N(0, I) in image space is drawn afresh every step (Score-SDE's
imputation and the MCG and ILVR code), or once per particle (``measurement_noise = "shared"``,
kept in ``state.extra``). The last step (s' = 0) projects onto y itself. Random draws per step
and particle: xi, then eps (both skipped at s' = 0).

``state.x0`` is x0_hat of the last step, and the sample x_N after the final step; before the
first step it is the zero image (no network call). The measurement noise sigma_y is not
modelled (the papers' noiseless setting): with lambda = 1 the sample fits y, noise included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from operators import LinearOperator, Operator
from solvers.base import Rows, Solver, State, Update, particle_randn
from solvers.config import Order, choice, hyper
from solvers.dps import check_image_shape, prior_sigmas
from solvers.preset import Preset
from solvers.registry import register
from solvers.schedules import BETA_SCHEDULES, DDPMScheduleConfig

NOISE_MODES = ("fresh", "shared")
EPS = "measurement_eps"  # extra key: the particle's eps when measurement_noise = "shared"


@dataclass(frozen=True)
class ProjectionConfig(DDPMScheduleConfig):
    """The reverse chain and projection shared by Score-SDE, MCG and ILVR."""

    num_steps: int = hyper(
        1000, 1, 10000, log=True, source="Score-SDE, MCG, ILVR: 1000 DDPM ancestral steps"
    )
    measurement_noise: str = choice(
        "fresh",
        NOISE_MODES,
        source="fresh: Score-SDE App. I.2 and the MCG / ILVR code (q_sample with new noise)",
    )
    cg_iters: int = hyper(
        50,
        1,
        1000,
        log=True,
        source="ours: CG iterations of A^+ (exact in 1 for inpainting, d_y for a matrix)",
    )
    beta_schedule: str = choice("linear", BETA_SCHEDULES, source="DDPM linear (ADM)")

    orders = (
        *DDPMScheduleConfig.orders,
        Order("num_steps", "train_steps", why="the grid respaces the training timesteps"),
    )


@dataclass(frozen=True)
class ScoreSDEConfig(ProjectionConfig):
    """Score-SDE projection: the chain plus the projection weight lambda."""

    projection: float = hyper(
        1.0,
        0.0,
        1.0,
        source="lambda of Song et al. ICLR 2022; 1: Score-SDE's replacement (full projection)",
    )


class ProjectionSolver(Solver):
    """Reverse ancestral step, optional guidance, projection onto y + s' A eps (module doc).

    Subclasses set the projection weight of each step (``weight``) and may add a guidance
    direction (``guided_denoise``)."""

    latent = False
    linear_only = True
    config: ProjectionConfig

    def __init__(self, config: ProjectionConfig | None = None) -> None:
        super().__init__(config)
        self.sigmas: list[float] = []

    @property
    def num_steps(self) -> int:
        return self.config.num_steps

    def noise_level(self, k: int) -> float:
        """s_{k+1}, the noise level of x after step ``k``."""
        return self.sigmas[k + 1]

    def denoised(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """x0_hat = D(x_k, s_k)."""
        assert self.prior is not None
        with torch.no_grad():
            return self.prior.denoise(x, self.sigmas[k])

    def weight(self, k: int) -> float:
        """The projection weight lambda of step ``k``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _init(
        self, generators: list[torch.Generator], indices: list[int], y: torch.Tensor
    ) -> State:
        prior, operator = self.prior, self.operator
        assert prior is not None and operator is not None
        like = torch.zeros(len(indices), *prior.shape, dtype=prior.dtype, device=prior.device)
        check_image_shape(self.name, like, operator)
        self.sigmas = prior_sigmas(self.config, prior)
        x = math.sqrt(1.0 + self.sigmas[0] ** 2) * particle_randn(generators, like)
        extra = {}
        if self.config.measurement_noise == "shared":
            extra[EPS] = particle_randn(generators, like)
        return State(
            x=x,
            x0=like,
            generators=generators,
            indices=indices,
            status=torch.zeros(len(indices), dtype=torch.long),
            extra=extra,
            y=y.to(device=prior.device, dtype=prior.dtype),
        )

    def guided_denoise(
        self, rows: Rows, x: torch.Tensor, s: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x0_hat = D(x, s) and the guidance direction g of the VP update (None: no guidance)."""
        assert self.prior is not None
        with torch.no_grad():
            return self.prior.denoise(x, s), None

    def _update(self, rows: Rows, k: int) -> Update:
        """One ancestral step, guidance (MCG), projection (module docstring)."""
        s, s_next = self.sigmas[k], self.sigmas[k + 1]
        x = rows.x.detach()
        x0, guidance = self.guided_denoise(rows, x, s)
        with torch.no_grad():
            x_next = x0 + (s_next**2 / s**2) * (x - x0)
            if s_next > 0:
                c = s_next * math.sqrt(max(s**2 - s_next**2, 0.0)) / s
                x_next = x_next + c * particle_randn(rows.generators, x)
            if guidance is not None:
                x_next = x_next - math.sqrt((1.0 + s**2) * (1.0 + s_next**2)) * guidance
            if rows.force is not None:
                x_next = x_next + (s**2 - s_next**2) * rows.force.to(x_next)
            target = rows.y
            if s_next > 0:
                if self.config.measurement_noise == "fresh":
                    eps = particle_randn(rows.generators, x)
                else:
                    eps = rows.extra[EPS]
                target = target + s_next * rows.operator(eps)
            lam = self.weight(k)
            if lam > 0:
                x_next = x_next + lam * self.project(rows.operator, x_next, target)
            x0_next = x_next if s_next == 0 else x0
        return Update(x_next, x0_next)

    def project(self, operator: Operator, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """A^+ (target - A x) per row: CG on the normal equations, at most ``cg_iters``
        iterations, stopped at a relative residual of 10 machine epsilons of x's dtype."""
        assert isinstance(operator, LinearOperator)
        residual = target.expand(x.shape[0], *target.shape[1:]) - operator(x)
        tol = 10 * torch.finfo(x.dtype).eps
        return operator.pseudo_inverse(residual, tol=tol, max_iter=self.config.cg_iters)


# Presets. Score-SDE (and MCG and ILVR) run 1000 DDPM ancestral steps with full projection
# (lambda = 1) on inpainting and super-resolution. Deblurring has no published setting: with
# noisy y the exact pseudo-inverse of a blur amplifies the noise (digits, 100 steps: 5.8 dB on
# gaussian_blur, 9.7 dB on motion_blur); CG stopped after 1 iteration (one exact line search
# along A^T r, a partial projection) gave 38.0 and 33.7 dB, 2 iterations 33.4 and 26.6, 3
# iterations 29.8 and 23.3 (docs/solvers/score_sde.md). "gmm": steps 50 and 200 scored alike.
PAPER_SETTING = "1000 DDPM ancestral steps, full projection (lambda = 1)"
DEBLUR = {"cg_iters": 1}
DEBLUR_SOURCE = (
    "ours: CG iterations 1 / 2 / 3 / 50 on digits deblurring (docs/solvers/score_sde.md)"
)
GMM_SOURCE = "ours: GMM benchmark check of steps (docs/solvers/score_sde.md)"
SCORE_SDE_PRESETS: dict[str, Preset] = {
    **{
        f"pixel/{task}": Preset(
            overrides={},
            backbone="pixel",
            task=task,
            source=f"Score-SDE (Song et al.): {PAPER_SETTING}",
        )
        for task in ("super_resolution", "inpaint_box", "inpaint_random")
    },
    **{
        f"pixel/{task}": Preset(overrides=DEBLUR, backbone="pixel", task=task, source=DEBLUR_SOURCE)
        for task in ("gaussian_blur", "motion_blur")
    },
    "gmm": Preset(overrides={"num_steps": 50}, task="matrix", source=GMM_SOURCE),
}


@register(presets=SCORE_SDE_PRESETS)
class ScoreSDE(ProjectionSolver):
    """Score-SDE projection (Song et al., ICLR 2021): reverse step, then x += lambda A^+ r."""

    name = "score_sde"
    config_class = ScoreSDEConfig
    config: ScoreSDEConfig

    def weight(self, k: int) -> float:
        return self.config.projection
