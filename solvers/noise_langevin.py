"""Noise-space Langevin posterior sampling with a deterministic generator (Purohit et al. 2024).

Purohit et al. 2024 ("Posterior sampling via Langevin dynamics based on generative priors";
reference code CPS_Diverse; docs/solvers/noise_langevin.md): with a deterministic noise-to-data
map G (a consistency model, or any deterministic ODE sampler), sample the noise z from

    p(z | y) ∝ N(z; 0, I) exp(-L(z)),   L(z) = ||y - A(G(z))||^2 / (2 sigma_c^2)

(A(decode(G(z))) for latent priors); the samples are x0 = G(z) (decoded).

Steps k < ``warm_steps``: Adam (lr ``warm_lr``, betas 0.9 / 0.999, eps 1e-8, bias-corrected
with t = k + 1) on R(z) = ||y - A(G(z))||^2 from z ~ N(0, I). The moments are per element and
R is a sum of per-particle terms, so every particle's update depends on its own z only.
Steps k >= ``warm_steps``: one Langevin step of size h = ``step_size``,

    Euler-Maruyama:  z <- z + h (force - z - grad L(z)) + sqrt(2 h) xi
    exponential:     z <- e^-h z + (1 - e^-h)(force - grad L(z)) + sqrt(1 - e^-2h) xi

with xi ~ N(0, I) from the particle's own generator. ``force`` is an extra log-density
gradient in z (added to the drift, scaled by h, or by 1 - e^-h for the exponential integrator);
during the warm start Adam descends R - 2 sigma_c^2 <force, z>, the same potential in R's units.
sigma_c = ``sigma_c``, or the operator's sigma when 0.

Each step makes one generator call with gradient, at the new z: the state caches
grad R(z) (``extra["grad"]``) for the next step, and ``state.x0`` is always G(z) (decoded).
Every Langevin iterate is a posterior sample: the images of the Langevin iterates z_1, z_2, ...
(every ``thin``-th, the last ``keep`` of them when ``keep`` > 0) accumulate in
``extra["chain"]``; ``chain_samples(state)`` returns them as (n, K, *image_shape), and
``result(state)`` the last iterate of each particle.

Priors without their own ``generator`` get the generic probability-flow ODE sampler
(``solvers.priors.ode``): ``generator_steps`` steps of ``generator_method`` on the poly-7 grid
from ``generator_sigma_max`` to ``generator_sigma_min`` (clamped to the prior's range), started at
sigma_max z. Its push-forward of N(0, I) is the prior only approximately: the ODE is discretised
and the start N(0, sigma_max^2 I) ignores the data's own spread.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
from solvers.config import SolverConfig, choice, hyper
from solvers.preset import Preset
from solvers.priors import ode
from solvers.priors.base import Prior
from solvers.registry import register
from solvers.schedules import karras_sigmas

INTEGRATORS = ("euler_maruyama", "exponential")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class NoiseLangevinConfig(SolverConfig):
    """Hyperparameters of noise-space Langevin sampling."""

    warm_steps: int = hyper(500, 0, 10000, source="paper App. B.1: 400-800 Adam steps")
    warm_lr: float = hyper(5e-3, 1e-5, 1.0, log=True, source="paper App. B.1: Adam lr 5e-3")
    langevin_steps: int = hyper(
        50, 1, 100000, log=True, source="paper Tables A.1-A.3: 10-50 Euler-Maruyama steps"
    )
    step_size: float = hyper(
        1.5e-4, 1e-8, 1.0, log=True, source="paper Tables A.1-A.3: h from 1e-6 to 1.5e-4"
    )
    sigma_c: float = hyper(
        0.0, 0.0, 100.0, source="0: the operator's sigma; the paper uses sigma_c = sigma_y = 0.1"
    )
    integrator: str = choice(
        "euler_maruyama", INTEGRATORS, source="paper eq. 11 (EM); App. C (exponential)"
    )
    keep: int = hyper(0, 0, 100000, source="chain iterates kept per particle; 0 keeps all")
    thin: int = hyper(1, 1, 10000, source="keep every thin-th Langevin iterate")
    generator_steps: int = hyper(
        10, 1, 1000, log=True, source="generic ODE generator only: steps (ode.generate)"
    )
    generator_method: str = choice("heun", ode.METHODS, source="generic ODE generator only")
    generator_sigma_max: float = hyper(
        80.0, 1e-2, 1e4, log=True, source="generic ODE generator only: EDM sigma_max 80"
    )
    generator_sigma_min: float = hyper(
        0.002, 1e-5, 10.0, log=True, source="generic ODE generator only: EDM sigma_min 0.002"
    )


# Presets (Purohit et al. 2024, LSUN-Bedroom 256, 1-step consistency model, sigma_y = sigma_c =
# 0.1; docs/solvers/noise_langevin.md): Adam steps / EM steps / h. "gmm": the MCGdiff benchmark
# (docs/gmm_benchmark.md), the best of a small sweep (warm 0-400 steps, lr 5e-3 to 5e-2, h 3e-5
# to 1e-3, 10-300 Langevin steps) on instances (8, 2, 0/1), (8, 4, 0), (80, 4, 1), (80, 1, 0); a
# stronger Adam warm start mattered most, since Langevin steps rarely cross between the
# generator's mode basins. Its step 1e-5: 1e-4 diverged on 3 of 120 benchmark instances (sigma_y
# about 0.004, so the likelihood's curvature ||A J||^2 / sigma_y^2 is about 5e4) and 3e-5 / 1e-5
# scored 31.9 / 29.6 x the floor against 41.8 on 18 instances (d in {8, 80}).
_SEED_TABLES = "Purohit et al. 2024 Tables A.1-A.3 (LSUN-Bedroom 256, consistency model)"
_CM_ROWS = {  # name: (task, warm_steps, langevin_steps, step_size)
    "cm/super_resolution_x4": ("super_resolution", 500, 50, 1.5e-4),
    "cm/super_resolution_x8": ("super_resolution", 800, 10, 1e-5),
    "cm/gaussian_blur": ("gaussian_blur", 800, 10, 1e-6),
    "cm/inpaint_random": ("inpaint_random", 800, 10, 1e-5),
}
NOISE_LANGEVIN_PRESETS: dict[str, Preset] = {
    **{
        name: Preset(
            overrides={
                "warm_steps": warm,
                "langevin_steps": steps,
                "step_size": h,
                "sigma_c": 0.1,
            },
            backbone="pixel",
            task=task,
            source=_SEED_TABLES,
        )
        for name, (task, warm, steps, h) in _CM_ROWS.items()
    },
    "gmm": Preset(
        overrides={
            "warm_steps": 200,
            "warm_lr": 2e-2,
            "langevin_steps": 100,
            "step_size": 1e-5,
            "generator_steps": 10,
        },
        task="matrix",
        source="GMM benchmark sweep (docs/gmm_benchmark.md)",
    ),
}


@register(presets=NOISE_LANGEVIN_PRESETS)
class NoiseLangevin(Solver):
    """Warm-started Langevin dynamics in the noise space of a deterministic generator."""

    name = "noise_langevin"
    config_class = NoiseLangevinConfig

    def __init__(self, config: NoiseLangevinConfig | None = None) -> None:
        super().__init__(config)
        self.sigma_c = 0.0
        self.generate: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def num_steps(self) -> int:
        return self.config.warm_steps + self.config.langevin_steps

    def _init(
        self, generators: list[torch.Generator], indices: list[int], y: torch.Tensor
    ) -> State:
        prior, operator = self.prior, self.operator
        assert prior is not None and operator is not None
        cfg = self.config
        self.sigma_c = cfg.sigma_c if cfg.sigma_c > 0 else operator.sigma
        if self.sigma_c <= 0:
            raise SolverInputError(
                f"{self.name}: the operator has sigma = 0, so set sigma_c > 0 (the likelihood "
                "scale of L = ||y - A(G(z))||^2 / (2 sigma_c^2))"
            )
        self.generate = _generator(prior, cfg)
        dtype, device = prior.dtype, prior.device
        y = y.to(device=device, dtype=dtype)
        like = torch.zeros(len(indices), *prior.shape, dtype=dtype, device=device)
        z = particle_randn(generators, like)
        image, grad = self._evaluate(z, y, operator)
        state = State(
            x=z,
            x0=image,
            generators=generators,
            indices=indices,
            status=torch.zeros(len(indices), dtype=torch.long),
            extra={
                "grad": grad,
                "adam_m": torch.zeros_like(z),
                "adam_v": torch.zeros_like(z),
                "chain": image.new_zeros(image.shape[0], 0, *image.shape[1:]),
            },
            y=y,
        )
        state.mark_nonfinite()
        return state

    def _evaluate(
        self, z: torch.Tensor, y: torch.Tensor, operator: Operator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image G(z) (decoded) and grad_z ||y - A(image)||^2 per particle (one G call), with
        the rows' own measurement ``y`` and ``operator``."""
        assert self.prior is not None and self.generate is not None
        with torch.enable_grad():
            z_in = z.detach().clone().requires_grad_(True)
            x = self.generate(z_in)
            image = self.prior.decode(x) if self.prior.is_latent else x
            if tuple(image.shape[1:]) != operator.input_shape:
                raise SolverInputError(
                    f"{self.name}: the prior's images have shape {tuple(image.shape[1:])} but "
                    f"{operator.name} acts on {operator.input_shape}"
                )
            ok, residual = finite_residuals(operator, image, y)
            if residual is None:
                return image.detach(), torch.full_like(z, float("nan"))
            (grad,) = torch.autograd.grad(residual.pow(2).sum(), z_in)
        grad = torch.where(ok.view(-1, *([1] * (z.dim() - 1))), grad, float("nan"))
        return image.detach(), grad

    def _update(self, rows: Rows, k: int) -> Update:
        """One Adam step (k < warm_steps) or one Langevin step, then G at the new z."""
        cfg = self.config
        z, grad = rows.x, rows.extra["grad"]
        f = None if rows.force is None else rows.force.to(z)
        extra: dict[str, torch.Tensor] = {}
        if k < cfg.warm_steps:
            if f is not None:
                grad = grad - 2 * self.sigma_c**2 * f
            (b1, b2), t = ADAM_BETAS, k + 1
            m = b1 * rows.extra["adam_m"] + (1 - b1) * grad
            v = b2 * rows.extra["adam_v"] + (1 - b2) * grad.pow(2)
            m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
            z_next = z - cfg.warm_lr * m_hat / (v_hat.sqrt() + ADAM_EPS)
            extra["adam_m"], extra["adam_v"] = m, v
        else:
            drift = -grad / (2 * self.sigma_c**2)
            if f is not None:
                drift = drift + f
            h = cfg.step_size
            xi = particle_randn(rows.generators, z)
            if cfg.integrator == "euler_maruyama":
                z_next = z + h * (drift - z) + math.sqrt(2 * h) * xi
            else:
                decay = math.exp(-h)
                z_next = decay * z - math.expm1(-h) * drift + math.sqrt(-math.expm1(-2 * h)) * xi
        image, extra["grad"] = self._evaluate(z_next, rows.y, rows.operator)
        return Update(z_next, image, extra)

    def step(self, state: State, k: int, force: torch.Tensor | None = None) -> State:
        """The template step, then every ``thin``-th Langevin iterate's image joins the chain."""
        running = bool(state is not None and state.active.any())
        state = super().step(state, k, force)
        langevin_index = k - self.config.warm_steps  # 0 for the first Langevin step
        if running and langevin_index >= 0 and (langevin_index + 1) % self.config.thin == 0:
            chain = torch.cat([state.extra["chain"], state.x0.unsqueeze(1)], dim=1)
            keep = self.config.keep
            state.extra = {**state.extra, "chain": chain[:, -keep:] if keep > 0 else chain}
        return state

    def chain_samples(self, state: State) -> torch.Tensor:
        """The accumulated Langevin samples (images), shape (n, K, *image_shape).

        Rows of stopped particles repeat their frozen (non-finite) state after they stopped.
        """
        return state.extra["chain"]


def _generator(prior: Prior, cfg: NoiseLangevinConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """The prior's own ``generator``, or the generic ODE sampler of ``cfg`` if it has none."""
    if type(prior).generator is not Prior.generator:
        return prior.generator
    hi = min(cfg.generator_sigma_max, prior.sigma_max)
    lo = max(cfg.generator_sigma_min, prior.sigma_min)
    if lo > hi:
        raise SolverInputError(
            f"noise_langevin: generator_sigma_min {lo:g} exceeds generator_sigma_max {hi:g} "
            f"within the prior's range [{prior.sigma_min:g}, {prior.sigma_max:g}]"
        )
    sigmas = karras_sigmas(cfg.generator_steps, lo, hi)
    method = cfg.generator_method

    def generate(z: torch.Tensor) -> torch.Tensor:
        return ode.solve(prior.denoise, hi * z, sigmas, method)

    return generate
