"""DAPS: Decoupled Annealing Posterior Sampling (Zhang et al., CVPR 2025), pixel and latent.

One annealing step i (``step(state, i)``, running particles only), sigma_i from
``schedules.annealing_sigmas``:

1. x0_hat = Euler solve of the probability-flow ODE from sigma_i down to the ODE end sigma over
   ``ode_steps + 1`` poly-rho levels (``ode_steps`` denoiser calls, no gradient); x0_hat is the
   ODE state at the end level, as in the reference code. The end level is raised to the prior's
   ``sigma_min`` where the prior is not defined below it.
2. x0_y = MCMC started at x0_hat with drift (score)
       s(x) = -w grad_x ||A(x) - y||^2 + (x0_hat - x) / r_i^2 + force,   r_i = sigma_i,
   w = 1 / tau^2 (``likelihood="reference"``, the main-branch code: loss summed, no 1/2) or
   w = 1 / (2 sigma_y^2) with the operator's sigma_y (``"gaussian"``: the exact Gaussian
   likelihood, so that the chain targets p(y | x0) N(x0; x0_hat, r_i^2 I)). Step size
   eta_i = lr (1 + i / (N + 1) (lr_min_ratio - 1)), divided by 1 / r_i^2 + 2 w ||J||^2
   (J the Jacobian of the data map, by power iteration) with ``lr_scaling="curvature"``.
   ULA: x <- x + eta s(x) + sqrt(2 eta) eps. HMC (damped Langevin), velocity v ~ N(0, I) drawn
   afresh at each MCMC call and local to it (nothing is carried in ``state.extra``):
   v <- m v + sqrt(eta) s(x) + sqrt(2 (1 - m)) eps; x <- x + sqrt(eta) v.
3. x_{i+1} = x0_y + sigma_{i+1} eps (sigma_N = 0: the last step returns x0_y).

``force`` (shape of ``state.x``, held fixed during the step) is added to s(x) at every MCMC
iteration: eta * force per ULA iteration, sqrt(eta) * force into the HMC velocity. With one MCMC
iteration, either way, it shifts x0_y and x_{i+1} by exactly eta * force (tests/test_daps.py).

Randomness: each particle draws from its own generator, per step and in this order, [the HMC
velocity], the ``mcmc_steps`` MCMC noises, the renoising noise; ``step_size(i)`` gives eta_i.
With ``lr_scaling="curvature"``, ||J||^2 is computed once in ``init`` at x = 0 (exact for affine
data maps, e.g. linear operators with pixel priors or the GMM's linear decoder), per problem when
the batch holds several (``operators.stack_rows``); rows whose problems differ in ||J||^2 run
their MCMC in separate sub-batches, each with its own step size.

Latent priors (LatentDAPS): the same loop in z, the data term through the decoder,
grad_z ||A(decode(z)) - y||^2, clamped elementwise to [-c, c] (``latent_grad_clamp`` c = 1 as in
the reference; 0 turns the clamp off) before it is weighted by w. ``state.x`` is the annealing
variable (z for latent priors), ``state.x0`` the image-space estimate decode(x0_y) of the last
step (zeros before the first step).

Cost: ``ode_steps`` denoiser calls per step, counted by the prior's ``nfe``; the MCMC calls no
network for pixel priors and only the decoder for latent ones (``mcmc_steps`` decoder calls with
backward, plus one to decode x0_y), which ``nfe`` does not count.

A particle whose state turns non-finite (NaN/inf from the prior, the decoder, the operator or the
update) is stopped: its status becomes "stopped: non-finite values" and it keeps its last finite
``x`` and ``x0`` (those before the failing step); the other particles are not affected.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from operators import Operator
from operators.base import LinearOperator
from solvers.base import (
    Rows,
    Solver,
    SolverInputError,
    State,
    Update,
    measurement_rows,
    particle_randn,
)
from solvers.config import Order, SolverConfig, choice, hyper
from solvers.preset import SEED_TASKS as TASKS
from solvers.preset import Preset
from solvers.priors import ode
from solvers.priors.base import Prior
from solvers.registry import register
from solvers.schedules import SCHEDULE_VARIANTS, annealing_sigmas, poly_sigmas

_REF = "DAPS reference code (zhangbingliang2019/DAPS, main branch), docs/solvers/daps.md"
_PIX = f"DAPS-1K pixel schedule; {_REF}"
_SWEEP = "DAPS Bayesian sweep range (docs/solvers/daps.md)"
_GMM = "dipswarm GMM benchmark (GMM_PRESETS below; docs/gmm_benchmark.md)"
# Per-particle noise of a step is drawn in blocks of at most this many numbers per particle; the
# block size depends only on the particle shape, so draws never depend on n.
NOISE_BLOCK_ELEMENTS = 2**18
# Power iteration for ||J||^2 (``lr_scaling="curvature"``).
POWER_ITERATIONS = 100
POWER_TOLERANCE = 1e-7


@dataclass(frozen=True)
class DAPSConfig(SolverConfig):
    """DAPS hyperparameters; defaults: DAPS-1K, pixel ULA (docs/solvers/daps.md)."""

    annealing_steps: int = hyper(200, 1, 5000, source=f"N; {_PIX} (latent DAPS-100: 50)")
    sigma_max: float = hyper(100.0, 1e-2, 1e4, log=True, source=f"{_PIX} (latent: 10)")
    sigma_min: float = hyper(0.1, 1e-4, 10.0, log=True, source=_PIX)
    rho: float = hyper(7.0, 1.0, 20.0, source=f"poly-7 spacing; {_REF}")
    schedule: str = choice(
        "main", SCHEDULE_VARIANTS, source="main: first N levels then 0; legacy: sigma_min, 0"
    )
    ode_steps: int = hyper(5, 1, 100, source=f"K; {_PIX} (latent: 2)")
    ode_end_sigma: float = hyper(0.01, 1e-5, 10.0, log=True, source=f"{_PIX} (latent: 0.001)")
    mcmc: str = choice("langevin", ("langevin", "hmc"), source=_REF)
    mcmc_steps: int = hyper(100, 1, 1000, source=f"pixel ULA table; {_SWEEP}: 10-100")
    lr: float = hyper(1e-4, 1e-8, 10.0, log=True, source=f"pixel ULA table; {_SWEEP}: 1e-6..1e-3")
    lr_min_ratio: float = hyper(0.01, 1e-3, 1.0, log=True, source=f"pixel ULA; {_SWEEP}: 0.01-1")
    lr_scaling: str = choice(
        "absolute", ("absolute", "curvature"), source=f"absolute: reference; curvature: {_GMM}"
    )
    momentum: float = hyper(0.9, 0.0, 1.0, source=f"HMC only; {_REF}; {_SWEEP}: 0-1")
    tau: float = hyper(0.01, 1e-4, 10.0, log=True, source=f"{_REF} (likelihood 'reference')")
    likelihood: str = choice(
        "reference", ("reference", "gaussian"), source=f"reference: {_REF}; gaussian: {_GMM}"
    )
    latent_grad_clamp: float = hyper(1.0, 0.0, 1e3, source=f"LatentDAPS; {_REF}; 0 = off")

    orders = (Order("sigma_min", "sigma_max"),)


LATENT_SCHEDULE: dict[str, Any] = {
    "annealing_steps": 50,
    "sigma_max": 10.0,
    "sigma_min": 0.1,
    "ode_steps": 2,
    "ode_end_sigma": 0.001,
    "mcmc": "hmc",
}
# The reference per-task table (configs/task/*.yaml; docs/solvers/daps.md):
# steps, lr[, lr_min_ratio, momentum].
_PIXEL_ULA = {
    "super_resolution": (100, 1e-4),
    "inpaint_box": (100, 5e-5),
    "inpaint_random": (100, 1e-4),
    "gaussian_blur": (100, 1e-4),
    "motion_blur": (100, 5e-5),
    "phase_retrieval": (100, 5e-5),
    "nonlinear_blur": (200, 1e-5),  # legacy branch: 100 / 5e-5
    "hdr": (100, 2e-5),
}
_PIXEL_HMC = {
    "super_resolution": (12, 1.04e-4, 0.012, 0.90),
    "inpaint_box": (84, 1.15e-5, 0.014, 0.003),
    "inpaint_random": (11, 3.56e-5, 0.015, 0.80),
    "gaussian_blur": (82, 4.04e-5, 0.011, 0.10),
    "motion_blur": (96, 3.69e-5, 0.01, 0.11),
    "phase_retrieval": (62, 9.75e-6, 0.019, 0.73),
    "nonlinear_blur": (85, 1.20e-5, 0.012, 0.46),
    "hdr": (100, 2.18e-5, 0.013, 0.23),
}
LDM_HMC = {
    "super_resolution": (24, 1.35e-4, 0.023, 0.86),
    "inpaint_box": (15, 9.02e-6, 0.13, 0.74),
    "inpaint_random": (38, 8.40e-6, 0.013, 0.92),
    "gaussian_blur": (35, 2.70e-6, 0.95, 0.95),
    "motion_blur": (49, 2.4e-5, 0.041, 0.45),
    "phase_retrieval": (65, 2.1e-5, 0.12, 0.41),
    "nonlinear_blur": (80, 3.71e-6, 0.024, 0.91),
    "hdr": (38, 4.52e-6, 0.015, 0.58),
}
_SD_HMC = {
    "super_resolution": (30, 1e-4, 1.0, 0.45),
    "inpaint_box": (58, 1.11e-6, 0.43, 0.92),
    "inpaint_random": (15, 3e-5, 1.0, 0.60),
    "gaussian_blur": (40, 1e-5, 1.0, 0.9),
    "motion_blur": (30, 2e-5, 1.0, 0.85),
    "phase_retrieval": (95, 1.10e-4, 0.027, 0.47),
    "nonlinear_blur": (60, 1e-5, 1.0, 0.80),
    "hdr": (45, 1.0e-5, 1.0, 0.7),
}


def hmc_fields(row: tuple[int, float, float, float]) -> dict[str, Any]:
    steps, lr, ratio, momentum = row
    return {
        "mcmc": "hmc",
        "mcmc_steps": steps,
        "lr": lr,
        "lr_min_ratio": ratio,
        "momentum": momentum,
    }


def _table_presets() -> dict[str, Preset]:
    """The per-task table of the DAPS reference (docs/solvers/daps.md), with the measurement
    noise each group was tuned for."""
    table: dict[str, Preset] = {}
    for task in TASKS:
        steps, lr = _PIXEL_ULA[task]
        groups = {
            "pixel_ula": ({"mcmc": "langevin", "mcmc_steps": steps, "lr": lr}, "pixel", 0.05),
            "pixel_hmc": (hmc_fields(_PIXEL_HMC[task]), "pixel", 0.05),
            "ldm_hmc": ({**LATENT_SCHEDULE, **hmc_fields(LDM_HMC[task])}, "latent", 0.05),
            "sd_hmc": ({**LATENT_SCHEDULE, **hmc_fields(_SD_HMC[task])}, "latent", 0.01),
        }
        for group, (overrides, backbone, sigma_y) in groups.items():
            table[f"{group}/{task}"] = Preset(
                overrides=overrides,
                backbone=backbone,
                task=task,
                source=f"{_REF}, configs/task table ({group}, sigma_y {sigma_y})",
            )
    return table


# MCGdiff Gaussian-mixture benchmark (exact posterior; tests/test_daps.py), tuned on instances
# d = 8, d_y in {1, 4}: the exact Gaussian likelihood, curvature-relative step sizes (sigma_y and
# ||A|| change from instance to instance), many short annealing steps from sigma = 10. More
# annealing steps helped most (DAPS's own approximation error dominates); HMC beat ULA; more MCMC
# iterations per step made the result worse, since the DAPS conditional N(x0_hat, sigma_i^2) is
# wider than p(x0 | x_i) and a short chain started at x0_hat stays closer to the latter.
_GMM_COMMON: dict[str, Any] = {
    "likelihood": "gaussian",
    "lr_scaling": "curvature",
    "latent_grad_clamp": 0.0,
    "annealing_steps": 1000,
    "sigma_max": 10.0,
    "sigma_min": 0.1,
    "ode_steps": 5,
    "ode_end_sigma": 0.01,
    "mcmc_steps": 5,
    "lr": 0.5,
    "lr_min_ratio": 1.0,
}
_GMM_SOURCE = "GMM benchmark tuning on d = 8, d_y in {1, 4} (docs/gmm_benchmark.md)"
GMM_PRESETS: dict[str, Preset] = {
    f"gmm/{backbone}_{label}": Preset(
        overrides={**_GMM_COMMON, "mcmc": mcmc, **extra},
        backbone=backbone,
        task="matrix",
        source=_GMM_SOURCE,
    )
    for backbone, label, mcmc, extra in (
        ("pixel", "ula", "langevin", {}),
        ("pixel", "hmc", "hmc", {"momentum": 0.95}),
        ("latent", "hmc", "hmc", {"momentum": 0.95}),
    )
}
# At 100 denoiser calls per sample (50 annealing x 2 ODE steps), the budget of the SMC samplers'
# gmm presets in `dipswarm bench smc`: `dipswarm tune experiments/configs/tune_gmm_nfe100_daps.yaml`
# (16 TPE trials, tuning instances 10000-10003 at d = 8, d_y = 2; mean SW 1.49).
GMM_PRESETS["gmm_nfe100"] = Preset(
    overrides={
        **_GMM_COMMON,
        "mcmc": "hmc",
        "annealing_steps": 50,
        "ode_steps": 2,
        "sigma_max": 19.8,
        "sigma_min": 0.169,
        "rho": 10.7,
        "mcmc_steps": 11,
        "lr": 0.78,
        "lr_min_ratio": 0.84,
        "momentum": 0.979,
    },
    backbone="pixel",
    task="matrix",
    source="dipswarm tune experiments/configs/tune_gmm_nfe100_daps.yaml (docs/gmm_benchmark.md)",
)


@register(presets={**_table_presets(), **GMM_PRESETS})
class DAPS(Solver):
    """Decoupled Annealing Posterior Sampling for pixel and latent priors (LatentDAPS)."""

    name = "daps"
    config_class = DAPSConfig

    def __init__(self, config: DAPSConfig | None = None) -> None:
        super().__init__(config)
        self.config: DAPSConfig
        c = self.config
        self.sigmas = annealing_sigmas(
            c.annealing_steps, c.sigma_max, c.sigma_min, c.rho, c.schedule
        )
        self._data_weight = 0.0
        # 2 w ||J||^2 per problem's operator (lr_scaling="curvature"), set by init
        self._data_curvature: dict[Operator, float] = {}
        # (y, operator, A^T y) of the last linear data gradient
        self._adjoint_y: tuple[torch.Tensor, Operator, torch.Tensor] | None = None

    @property
    def num_steps(self) -> int:
        return self.config.annealing_steps

    def noise_level(self, k: int) -> float:
        """sigma_{k+1}: the noise level of ``state.x`` after step ``k``."""
        return self.sigmas[k + 1]

    def step_size(self, k: int, curvature: float | None = None) -> float:
        """The MCMC step size eta of annealing step ``k`` (after ``init``) for a problem whose
        data term has curvature 2 w ||J||^2 = ``curvature`` (default: that of the run's problems,
        which must share one)."""
        c = self.config
        eta = c.lr * (1 + k / (c.annealing_steps + 1) * (c.lr_min_ratio - 1))
        if c.lr_scaling == "curvature":
            if curvature is None:
                values = set(self._data_curvature.values()) or {0.0}
                if len(values) > 1:
                    raise SolverInputError(
                        f"{self.name}: the problems of this batch have different step sizes; "
                        "pass the curvature of one problem"
                    )
                (curvature,) = values
            eta /= 1 / self.sigmas[k] ** 2 + curvature
        return eta

    # -- setup -----------------------------------------------------------------------------------
    def check_problem(self, prior: Prior, operator: Operator, y: torch.Tensor) -> None:
        super().check_problem(prior, operator, y)
        c, cls = self.config, type(self.config).__name__
        if c.sigma_max > prior.sigma_max * (1 + 1e-6):
            raise SolverInputError(
                f"{cls}.sigma_max = {c.sigma_max} exceeds the prior's largest noise level "
                f"{prior.sigma_max:g}; lower sigma_max"
            )
        lowest = min(s for s in self.sigmas if s > 0)
        if lowest < prior.sigma_min * (1 - 1e-6):
            raise SolverInputError(
                f"{cls}.sigma_min: the schedule reaches {lowest:g}, below the prior's smallest "
                f"noise level {prior.sigma_min:g}; raise sigma_min"
            )
        if c.likelihood == "gaussian" and operator.sigma == 0:
            raise SolverInputError(
                f"{cls}.likelihood = 'gaussian' needs measurement noise sigma > 0; the operator "
                "has sigma = 0 (use likelihood='reference' with tau)"
            )
        if not prior.is_latent and prior.shape != operator.input_shape:
            raise SolverInputError(
                f"the prior samples shape {prior.shape} but {operator.name} acts on "
                f"{operator.input_shape}"
            )

    def _init(
        self, generators: list[torch.Generator], indices: list[int], y: torch.Tensor
    ) -> State:
        prior, operator = self._problem()
        c = self.config
        self._adjoint_y = None
        like = torch.empty((len(generators), *prior.shape), dtype=prior.dtype, device=prior.device)
        x = self.sigmas[0] * particle_randn(generators, like)
        self._data_weight = (
            1 / c.tau**2 if c.likelihood == "reference" else 1 / (2 * operator.sigma**2)
        )
        self._data_curvature = {
            part: 2 * self._data_weight * self._jacobian_norm_sq(part)
            for part, _ in operator.row_groups()
            if c.lr_scaling == "curvature"
        }
        return State(
            x=x,
            x0=x.new_zeros((len(generators), *operator.input_shape)),
            generators=generators,
            indices=indices,
            status=torch.zeros(len(generators), dtype=torch.long, device=x.device),
            y=y.to(device=x.device, dtype=x.dtype),
        )

    # -- one annealing step ----------------------------------------------------------------------
    def _update(self, rows: Rows, k: int) -> Update:
        """Annealing step ``k``: x0_hat by the ODE, MCMC towards p(x0 | x_k, y), renoise.

        A row that fails keeps its last ``x`` and ``x0`` and is stopped (``Update.failed``).
        """
        prior, _ = self._problem()
        sigma, sigma_next = self.sigmas[k], self.sigmas[k + 1]
        with torch.no_grad():
            x0hat = self._ode(rows.x, sigma)
        bad = ~finite_rows(x0hat)
        x0hat = where_rows(bad, rows.x, x0hat)  # a finite stand-in for rows that failed
        x0y, renoise, bad_mcmc = self._posterior_draw(rows, x0hat, k)
        x0y, bad_refine = self._refine(rows.operator, rows.y, x0y, k)
        x_next = x0y + sigma_next * renoise
        with torch.no_grad():
            image = prior.decode(x0y) if prior.is_latent else x0y
        bad = bad | bad_mcmc | bad_refine | ~finite_rows(x_next) | ~finite_rows(image)
        return Update(
            x=where_rows(bad, rows.x, x_next.detach()),
            x0=where_rows(bad, rows.x0, image.detach()),
            failed=bad,
        )

    def _posterior_draw(
        self, rows: Rows, x0hat: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x0_y, the renoising noise, rows that failed) of step ``k``: one MCMC batch per step
        size (one batch unless the problems' curvatures differ)."""
        groups = self._step_size_groups(rows.operator, k)
        if len(groups) == 1:
            eta = groups[0][0]
            return self._chain(rows.operator, rows.y, x0hat, k, eta, rows.force, rows.generators)
        x0y, renoise = torch.empty_like(x0hat), torch.empty_like(x0hat)
        bad = torch.zeros(x0hat.shape[0], dtype=torch.bool, device=x0hat.device)
        for eta, index in groups:
            assert index is not None
            at = index.to(x0hat.device)
            x0y[at], renoise[at], bad[at] = self._chain(
                rows.operator.take_rows(index),
                measurement_rows(rows.y, at),
                x0hat[at],
                k,
                eta,
                None if rows.force is None else rows.force[at],
                [rows.generators[i] for i in index.tolist()],
            )
        return x0y, renoise, bad

    def _step_size_groups(
        self, operator: Operator, k: int
    ) -> list[tuple[float, torch.Tensor | None]]:
        """(eta, rows) for each step size among the rows of ``operator`` (None: every row)."""
        if self.config.lr_scaling != "curvature":
            return [(self.step_size(k, 0.0), None)]
        rows: dict[float, list[torch.Tensor | None]] = {}
        for part, index in operator.row_groups():
            rows.setdefault(self._data_curvature[part], []).append(index)
        if len(rows) == 1:
            return [(self.step_size(k, next(iter(rows))), None)]
        return [
            (self.step_size(k, value), torch.cat([i for i in index if i is not None]))
            for value, index in rows.items()
        ]

    def _chain(
        self,
        operator: Operator,
        y: torch.Tensor,
        x0hat: torch.Tensor,
        k: int,
        eta: float,
        force: torch.Tensor | None,
        generators: list[torch.Generator],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x0_y, renoising noise, failed rows) of rows drawing from ``generators``, with step
        size ``eta``."""
        # One block of per-particle noise per step: [HMC velocity], MCMC noise, renoising noise.
        noise = _noise_stream(generators, x0hat, self._draws_per_step())
        x0y, bad = self._mcmc(operator, y, x0hat, k, eta, force, noise)
        return x0y, next(noise), bad

    def _refine(
        self, operator: Operator, y: torch.Tensor, x0y: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A hook between the MCMC and the renoising (DAPSOpt); DAPS keeps x0_y."""
        return x0y, torch.zeros(x0y.shape[0], dtype=torch.bool, device=x0y.device)

    def denoised(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """x0_hat of annealing step ``k`` (the ODE solve from sigma_k), in image space."""
        prior, _ = self._problem()
        x0hat = self._ode(x, self.sigmas[k])
        return prior.decode(x0hat) if prior.is_latent else x0hat

    def _ode(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        prior, _ = self._problem()
        end = max(self.config.ode_end_sigma, prior.sigma_min)
        if sigma <= end:
            return prior.denoise(x, sigma)
        levels = poly_sigmas(self.config.ode_steps + 1, sigma, end, self.config.rho)
        return ode.solve(prior.denoise, x, levels, method="euler")

    def _draws_per_step(self) -> int:
        return self.config.mcmc_steps + int(self.config.mcmc == "hmc") + 1

    def _mcmc(
        self,
        operator: Operator,
        y: torch.Tensor,
        x0hat: torch.Tensor,
        k: int,
        eta: float,
        force: torch.Tensor | None,
        noise: Iterator[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x0_y and the rows that turned non-finite (those rows hold x0_hat instead)."""
        c = self.config
        r2, weight = self.sigmas[k] ** 2, self._data_weight
        root = math.sqrt(eta)
        # score(x) = anchor - x / r2 - weight * grad(x), anchor = x0_hat / r2 (+ force). With up
        # to 100 iterations per annealing step the per-iteration work is the solver's own
        # overhead: the updates are fused in-place adds, and finiteness is checked once after
        # the loop (a NaN or inf entry stays non-finite through every later update).
        anchor = x0hat / r2 if force is None else x0hat / r2 + force
        hmc = c.mcmc == "hmc"
        anchor = anchor * (root if hmc else eta)
        x = x0hat  # never written in place: every update makes a new tensor first
        v = next(noise) if hmc else None  # ULA carries no velocity
        bad = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(c.mcmc_steps):
            grad, bad_data = self._data_gradient(operator, x, y)
            bad = bad | bad_data  # latent rows whose decoded image failed
            eps = next(noise)
            if v is not None:  # v' = m v + sqrt(eta) score(x) + sqrt(2 (1 - m)) eps
                v = torch.add(anchor, v, alpha=c.momentum)
                v.add_(x, alpha=-root / r2).add_(grad, alpha=-root * weight)
                v.add_(eps, alpha=math.sqrt(2 * (1 - c.momentum)))
                x = torch.add(x, v, alpha=root)  # x' = x + sqrt(eta) v'
            else:  # x' = x + eta score(x) + sqrt(2 eta) eps
                x = torch.add(anchor, x, alpha=1 - eta / r2)
                x.add_(grad, alpha=-eta * weight).add_(eps, alpha=math.sqrt(2 * eta))
        bad = bad | ~finite_rows(x)
        return where_rows(bad, x0hat, x), bad

    def _data_gradient(
        self, operator: Operator, x: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """grad_x ||A(image(x)) - y||^2 per particle (clamped for latent priors), bad rows."""
        prior, _ = self._problem()
        if not prior.is_latent and operator.is_linear:  # 2 A^T (A x - y), no autograd needed
            assert isinstance(operator, LinearOperator) and y is not None
            cached = self._adjoint_y
            if cached is None or cached[0] is not y or cached[1] is not operator:
                with torch.no_grad():  # A^T y is the same at every MCMC iteration: once per run
                    self._adjoint_y = cached = (y, operator, operator.adjoint(y))
            with torch.no_grad():
                grad = 2 * (operator.normal(x) - cached[2])
            return grad, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            loss, bad = self._measurement_error(operator, xg, y)
            (grad,) = torch.autograd.grad(loss.sum(), xg)
        clamp = self.config.latent_grad_clamp
        if prior.is_latent and clamp > 0:
            grad = grad.clamp(-clamp, clamp)
        return grad, bad

    def _measurement_error(
        self, operator: Operator, x: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """||A(image(x)) - y||^2 per particle (differentiable) and the rows whose decoded image
        is non-finite (replaced by zeros so that the operator accepts the batch)."""
        prior, _ = self._problem()
        assert y is not None
        image = prior.decode(x) if prior.is_latent else x
        bad = ~finite_rows(image.detach())
        if bool(bad.any()):
            image = where_rows(bad, torch.zeros_like(image), image)
        return operator.loss(image, y), bad

    # -- helpers ---------------------------------------------------------------------------------
    def _problem(self) -> tuple[Prior, Operator]:
        if self.prior is None or self.operator is None:
            raise SolverInputError(f"{self.name}: call init(prior, operator, y, ...) before step")
        return self.prior, self.operator

    def _jacobian_norm_sq(self, operator: Operator) -> float:
        """||J||^2 of the data map x -> A(image(x)) of one problem's ``operator`` by power
        iteration on J^T J at x = 0 (exact for affine maps; a local estimate otherwise).
        Deterministic: start vector seeded 0."""
        prior, _ = self._problem()

        def data_map(x: torch.Tensor) -> torch.Tensor:
            return operator(prior.decode(x) if prior.is_latent else x)

        point = torch.zeros((1, *prior.shape), dtype=prior.dtype, device=prior.device)
        v = torch.randn(point.shape, generator=torch.Generator().manual_seed(0)).to(point)
        v = v / v.norm()
        value = 0.0
        for _ in range(POWER_ITERATIONS):
            _, jv = torch.autograd.functional.jvp(data_map, point, v)
            _, w = torch.autograd.functional.vjp(data_map, point, jv)
            new = float((w * v).sum())
            norm = w.norm()
            if float(norm) == 0.0:
                return 0.0
            v = w / norm
            converged = abs(new - value) <= POWER_TOLERANCE * abs(new)
            value = new
            if converged:
                break
        return value


def finite_rows(t: torch.Tensor) -> torch.Tensor:
    """Rows without NaN/inf (one reduction: a non-finite entry makes the row sum non-finite)."""
    accumulate = torch.float64 if t.dtype == torch.float64 else torch.float32
    return torch.isfinite(t.flatten(1).sum(dim=1, dtype=accumulate))


def where_rows(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Rows of ``a`` where ``mask``, rows of ``b`` elsewhere."""
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


def _noise_stream(
    generators: Sequence[torch.Generator], like: torch.Tensor, count: int
) -> Iterator[torch.Tensor]:
    """``count`` standard normal tensors shaped like ``like``, row i from ``generators[i]``."""
    per_block = max(1, NOISE_BLOCK_ELEMENTS // max(1, like[0].numel()))
    left = count
    while left > 0:
        m = min(per_block, left)
        block = particle_randn(generators, like.new_empty((like.shape[0], m, *like.shape[1:])))
        yield from block.unbind(1)
        left -= m
