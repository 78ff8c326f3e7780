"""MMPS: moment-matching posterior sampling with the Tweedie covariance.

Rozet, Andry, Lanusse, Louppe, "Learning diffusion priors from observations by expectation
maximization", NeurIPS 2024 (Section 4, "Moment matching posterior sampling"). Pixel priors,
linear operators (docs/solvers/mmps.md).

For x_t = x0 + sigma n (the prior's EDM/VE form), Tweedie's formulas give the first two moments
of p(x0 | x_t) from the denoiser D: E[x0 | x_t] = D(x_t, sigma) and
Cov[x0 | x_t] = Sigma_t = sigma^2 dD/dx_t. MMPS replaces p(x0 | x_t) by the Gaussian with these
moments, so that with y = A x0 + sigma_y eps the conditional mean is the Gaussian conditional

    E[x0 | x_t, y] = D + Sigma_t A^T (A Sigma_t A^T + sigma_y^2 I)^-1 (y - A D).

Sigma_t is never formed: Sigma_t u = sigma^2 J^T u is a vector-Jacobian product through the
denoiser's graph (J is symmetric for an exact denoiser, the Hessian of a log-density plus I;
the reference code uses the VJP too), and the inverse is ``cg_iters`` iterations of batched
conjugate gradients in measurement space (operators/linalg.py), each one VJP. The prior's
``nfe`` counts its forward calls only: one per step; a step also runs cg_iters + 1 VJPs (a
backward pass each, about two forwards' cost).

Sampler: DDIM (Song et al., ICLR 2021) in VE form with the posterior mean in place of D, on a
geometric grid of ``steps`` levels from ``sigma_max`` down to ``sigma_min`` (the reference
code's log-linear VE schedule; clipped into the prior's range) and then 0. Step k
(s = sigma_k, s' = sigma_{k+1}, m = E[x0 | x_k, y]):

    c = eta s' sqrt(s^2 - s'^2) / s
    x_{k+1} = m + sqrt(s'^2 - c^2) (x_k - m) / s + c xi + (s^2 - s'^2) force

eta = 0 is DDIM, eta = 1 the DDPM ancestral step; xi ~ N(0, I) from the particle's own
generator. Start x_0 ~ N(0, sigma_0^2 I). ``state.x0`` is the step's posterior mean m, and
after the last step (s' = 0) the sample itself, which then equals m.

Rows of several problems: the residual, A, A^T and the CG inner products are per row, so each
row sees only its own y and operator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from operators import LinearOperator, Operator
from operators.linalg import cg
from solvers.base import Rows, Solver, SolverInputError, State, Update, particle_randn
from solvers.config import Order, SolverConfig, hyper
from solvers.preset import Preset
from solvers.priors.base import Prior
from solvers.registry import register

PAPER = "Rozet et al. (NeurIPS 2024) reference code"


@dataclass(frozen=True)
class MMPSConfig(SolverConfig):
    """MMPS hyperparameters; the defaults are the reference code's."""

    steps: int = hyper(64, 1, 10000, log=True, source=f"{PAPER}: 64 sampling steps")
    eta: float = hyper(1.0, 0.0, 1.0, source="1: DDPM ancestral step (reference DDPM); 0: DDIM")
    cg_iters: int = hyper(1, 1, 1000, log=True, source=f"{PAPER}: CG maxiter 1")
    cg_tol: float = hyper(1e-3, 1e-14, 1.0, log=True, source=f"{PAPER}: CG rtol 1e-3")
    sigma_min: float = hyper(1e-3, 1e-6, 10.0, log=True, source=f"{PAPER}: VE sigma from 1e-3")
    sigma_max: float = hyper(100.0, 1e-2, 1e4, log=True, source=f"{PAPER}: VE sigma to 1e2")

    orders = (Order("sigma_min", "sigma_max", strict=True),)


def geometric_sigmas(config: MMPSConfig, prior: Prior) -> list[float]:
    """``steps`` levels from sigma_max down to sigma_min, evenly spaced in log sigma, clipped
    into the prior's range, then 0."""
    hi = min(config.sigma_max, prior.sigma_max)
    lo = min(max(config.sigma_min, prior.sigma_min), hi)
    n = config.steps
    if n == 1:
        return [hi, 0.0]
    ratio = math.log(lo / hi)
    return [hi * math.exp(ratio * i / (n - 1)) for i in range(n)] + [0.0]


# Presets. "gmm": the MCGdiff benchmark (docs/gmm_benchmark.md); d_y <= 4 there, so 4 CG
# iterations solve the measurement-space system exactly. Mean SW / floor on the tuning
# instances 7000-7001 (all 6 cells, 300 samples): 50 steps 6.9 (eta 0: 12.0; 100 and 200
# steps: 7.2, 7.3), sigma_max 200: 5.6 at 50 steps, 5.1 at 30 steps (the d = 80 mixture spreads
# beyond sigma 100). "digits/super_resolution": the shipped digits prior at 64 denoiser calls
# (the peer comparison's budget). Mean PSNR of the 4 image-task test digits (seeds 0-3 / 4-7):
# cg_iters 1: 30.96 / 31.01 dB, 2: 30.90 / 31.14, 3: 24.47 (one digit diverges, 5.7 dB),
# 5: 18.69 (two diverge); eta 0 with 3 iterations: 18.74. The network's Jacobian is neither
# symmetric nor PSD, so more CG iterations can amplify (docs/solvers/mmps.md).
MMPS_PRESETS: dict[str, Preset] = {
    "paper": Preset(overrides={}, backbone="pixel", source=f"{PAPER}: the defaults"),
    "gmm": Preset(
        overrides={"steps": 30, "sigma_max": 200.0, "cg_iters": 4, "cg_tol": 1e-8},
        task="matrix",
        source="GMM sweep on tuning instances 7000-7001 (comment above)",
    ),
    "digits/super_resolution": Preset(
        overrides={"steps": 64, "cg_iters": 1},
        backbone="pixel",
        task="super_resolution",
        source="ours: digits 4x SR at 64 NFE, CG 1-5 iterations measured (docs/solvers/mmps.md)",
    ),
}


@register(presets=MMPS_PRESETS)
class MMPS(Solver):
    """Moment-matching posterior sampling (Rozet et al., NeurIPS 2024) for pixel priors."""

    name = "mmps"
    config_class = MMPSConfig
    latent = False
    linear_only = True

    def __init__(self, config: MMPSConfig | None = None) -> None:
        super().__init__(config)
        self.sigmas: list[float] = []

    @property
    def num_steps(self) -> int:
        return self.config.steps

    def noise_level(self, k: int) -> float:
        """sigma_{k+1}, the noise level of x after step ``k``."""
        return self.sigmas[k + 1]

    def denoised(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The prior's x0_hat = D(x_k, sigma_k) (without the measurement)."""
        assert self.prior is not None
        return self.prior.denoise(x, self.sigmas[k])

    def check_problem(self, prior: Prior, operator: Operator, y: torch.Tensor) -> None:
        super().check_problem(prior, operator, y)
        if not isinstance(operator, LinearOperator):
            raise SolverInputError(
                f"{self.name} needs a linear operator with an adjoint (operators.LinearOperator: "
                f"matrix, inpainting, super-resolution, blurs); {operator.name} is not one"
            )

    def _init(
        self, generators: list[torch.Generator], indices: list[int], y: torch.Tensor
    ) -> State:
        prior = self.prior
        assert prior is not None
        zeros = torch.zeros(len(indices), *prior.shape, dtype=prior.dtype, device=prior.device)
        self.sigmas = geometric_sigmas(self.config, prior)
        return State(
            x=self.sigmas[0] * particle_randn(generators, zeros),
            x0=zeros,
            generators=generators,
            indices=indices,
            status=torch.zeros(len(indices), dtype=torch.long),
            y=y.to(device=prior.device, dtype=prior.dtype),
        )

    def posterior_mean(
        self, x: torch.Tensor, sigma: float, operator: Operator, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(E[x0 | x, y], D(x, sigma)) under the moment-matched Gaussian (module docstring):
        one denoiser call and cg_iters + 1 vector-Jacobian products."""
        prior, cfg = self.prior, self.config
        assert prior is not None and isinstance(operator, LinearOperator)
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            x0 = prior.denoise(x_in, sigma)

        def covariance(u: torch.Tensor) -> torch.Tensor:
            """Sigma_t u = sigma^2 J^T u."""
            (vjp,) = torch.autograd.grad(x0, x_in, u, retain_graph=True)
            return sigma**2 * vjp

        def gram(v: torch.Tensor) -> torch.Tensor:
            """(A Sigma_t A^T + sigma_y^2 I) v in measurement space."""
            return operator.sigma**2 * v + operator(covariance(operator.adjoint(v)))

        mean = x0.detach()
        residual = (y - operator(mean)).expand(x.shape[0], *operator.output_shape)
        v = cg(gram, residual, tol=cfg.cg_tol, max_iter=cfg.cg_iters)
        return mean + covariance(operator.adjoint(v)), mean

    def _update(self, rows: Rows, k: int) -> Update:
        """One DDIM step with the MMPS posterior mean (module docstring)."""
        s, s_next = self.sigmas[k], self.sigmas[k + 1]
        x = rows.x.detach()
        mean, _ = self.posterior_mean(x, s, rows.operator, rows.y)
        with torch.no_grad():
            c = self.config.eta * s_next * math.sqrt(max(s**2 - s_next**2, 0.0)) / s
            x_next = mean + math.sqrt(max(s_next**2 - c**2, 0.0)) * (x - mean) / s
            if c > 0:
                x_next = x_next + c * particle_randn(rows.generators, x)
            if rows.force is not None:
                x_next = x_next + (s**2 - s_next**2) * rows.force.to(x_next)
        return Update(x_next, x_next if s_next == 0 else mean)
