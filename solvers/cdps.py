"""C-DPS: coupled data- and measurement-space diffusion posterior sampling.

Follows Mohajer Hamidi, Liang, Yang 2025 (docs/solvers/cdps.md) for linear operators and pixel
priors. The state ``x`` is the VP-form x_t = sqrt(ab_t) (x0 + sigma_t n) on an ancestral grid
ab_S < ... < ab_1 < ab_0 = 1 (``ddpm_levels``; beta_s = 1 - ab_s / ab_{s-1} re-derived on the
sub-grid). The prior's EDM denoiser gives the VP score at x_t:
s(x_t) = grad log p_t(x_t) = score_EDM(x_t / sqrt(ab_t), sigma_t) / sqrt(ab_t)
       = (sqrt(ab_t) D(x_t / sqrt(ab_t), sigma_t) - x_t) / (1 - ab_t),  sigma_t^2 = (1 - ab_t)/ab_t.

Measurement chain y_0 = y, y_s = sqrt(1 - beta_s) y_{s-1} + sqrt(beta_s) rho z_s, z_s ~ N(0, I).
The seed uses rho = 1. That is not invariant to rescaling the measurement equation (y, A,
sigma_y) -> k (y, A, sigma_y): with rho = 1, a direction of A with singular value a is pulled
toward the data by about a^2 ln(1 / sigma_y^2) over the whole chain, so a weak operator
(SR x4 by average pooling: a^2 = 1/16) is barely used (measured residual ||Ax - y||^2 10.1
against a noise floor of 0.16, PSNR far below bicubic upsampling). By default rho is set
relative to the operator, rho = ``chain_noise`` ||A|| (||A|| by power iteration); the seed's
chain is ``chain_noise=1, chain_noise_units="absolute"`` (preset ``paper``). Smaller rho uses
the data more strongly and, too small, fits the noise (Gaussian deblurring at rho = ||A|| / 30).
Its joint law given y is drawn per particle as y_S ~ N(sqrt(ab_S) y, (1 - ab_S) rho^2 I) at ``init``
and then y_{s-1} ~ q(y_{s-1} | y_s, y_0) (the DDPM bridge) at each step: the same joint law as
simulating the chain forward at init, with O(1) memory in S instead of S copies of y.

One ``step`` goes from level s to s-1 (beta = beta_s, ab = ab_{s-1}, sigma_y = operator noise):
  Sigma = ab sigma_y^2 + (1 - ab) rho^2,   c = (1 - beta) / beta,   b = (1 - ab) A s(x_t),
  Lambda v = c v + A^T A v / Sigma,
  Lambda mu = c x_t' + A^T (y_{s-1} - b) / Sigma + force,
  Lambda v = sqrt(c) e1 + A^T e2 / sqrt(Sigma)   (perturb-then-optimise, e1, e2 ~ N(0, I)),
  x_{s-1} = mu + v,
both solves by matrix-free batched CG (``cg_iters`` iterations), warm-started at their
right-hand side / c, which is exact on the null space of A (CG then works in range(A^T)).
x_t' is the prior's reverse-step mean: ``prior_mean="ddpm"`` (default) uses the DDPM mean
(x_t + beta s(x_t)) / sqrt(1 - beta), i.e. the prior transition times the measurement
likelihood. ``"literal"`` uses x_t / sqrt(1 - beta), the mean of the seed's formula
Sigma_post (sqrt(1 - beta)/beta x_t + ...; its CG slide writes c_t x_t, dropping the
1/sqrt(1 - beta) of the derivation), which omits the prior factor p(x_{t-1}): the prior
then enters only through b, and the null space of A is not denoised (its variance grows like
1 / ab_S), so it is kept for reference only.
``force`` tilts the Gaussian transition by exp(<force, x>): it is added to the mean's
right-hand side, so the mean moves by Lambda^-1 force (about beta / (1 - beta) force).
``state.x0`` is the Tweedie estimate D at the step's input level, and the sample x_0 itself
after the last step.

The chain and step are filtering posterior sampling's construction (Dou & Song, ICLR 2024): C-DPS
is FPS-SMC (solvers/fps_smc.py, a subclass) with one particle and a chain per particle.

A batch holding several problems (``operators.stack_rows``) gives each row its own y, A and,
with ``chain_noise_units="operator_norm"``, its own rho = chain_noise ||A_row|| (one power
iteration per problem at ``init``); Sigma is then a per-row number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from operators import LinearOperator, Operator
from operators.linalg import cg, largest_eigenvalue
from solvers.base import Rows, SolverInputError, State, Update, particle_randn, per_row
from solvers.config import SolverConfig, choice, hyper
from solvers.preset import Preset
from solvers.priors.base import Prior
from solvers.registry import register
from solvers.vp_grid import (
    VPGridConfig,
    VPGridSolver,
    bad_rows,
    ddpm_levels,
    level_sigma,
    zero_rows,
)

SEED = "C-DPS (Mohajer Hamidi, Liang, Yang 2025)"


class Move(NamedTuple):
    """One reverse step's output and the proposal's inputs that an importance weight needs."""

    x: torch.Tensor  # x_{s-1}
    x0: torch.Tensor  # the clean estimate
    x_prime: torch.Tensor  # the prior transition's mean x_t'
    target: torch.Tensor  # y_{s-1} - b


@dataclass(frozen=True)
class CDPSConfig(VPGridConfig):
    """C-DPS hyperparameters (the paper publishes no code; CG count and grid are ours)."""

    steps: int = hyper(1000, 2, 10000, log=True, source=f"{SEED}: DDPM, T = 1000")
    cg_iters: int = hyper(10, 1, 1000, log=True, source="ours: not published; 5-20 is a start")
    cg_tol: float = hyper(1e-8, 1e-14, 1e-2, log=True, source="ours: relative CG residual")
    prior_mean: str = choice(
        "ddpm", ("ddpm", "literal"), source="ours; 'literal' = the seed's mean (no prior factor)"
    )
    chain_noise: float = hyper(
        0.1,
        1e-4,
        100.0,
        log=True,
        source="ours (paper: 1, absolute): best of {1, 1/3, 0.1, 1/30} x ||A|| on the "
        "digits linear tasks; 1/30 wrecks Gaussian deblurring (noise fitting)",
    )
    chain_noise_units: str = choice(
        "operator_norm",
        ("operator_norm", "absolute"),
        source="ours; 'operator_norm': rho = chain_noise ||A||, 'absolute': rho = chain_noise",
    )
    min_noise: float = hyper(
        1e-3, 1e-8, 1.0, log=True, source="ours: floor on sigma_y so Sigma_{y|x} is invertible"
    )


# GMM benchmark: chain_noise 1 / 0.1 / 0.03 / 0.01 / 0.001 scored 79.4 / 26.2 / 23.9 / 23.4 /
# 23.3 x the floor on 24 instances; 0.03 keeps a margin from fitting the noise. Steps 50-300 and
# the karras grid scored alike with the seed's chain; CG is exact here in d_y + 1 iterations
# (Lambda = c I + rank d_y).
CDPS_PRESETS: dict[str, Preset] = {
    "paper": Preset(
        overrides={
            "steps": 1000,
            "cg_iters": 10,
            "chain_noise": 1.0,
            "chain_noise_units": "absolute",
        },
        source=f"{SEED}: DDPM with T = 1000 on FFHQ/ImageNet (CG count unpublished: 10)",
    ),
    "cpu": Preset(
        overrides={"steps": 100, "cg_iters": 10},
        source="ours: 100 ancestral steps on the same alpha-bar table, for CPU",
    ),
    "gmm": Preset(
        overrides={"steps": 100, "cg_iters": 10, "chain_noise": 0.03},
        task="matrix",
        source="GMM benchmark sweep of chain_noise (docs/gmm_benchmark.md)",
    ),
    # 100 denoiser calls per sample, the SMC samplers' budget in `dipswarm bench smc`: `dipswarm
    # tune experiments/configs/tune_gmm_nfe100_cdps.yaml` (16 TPE trials, tuning instances
    # 10000-10003 at d = 8, d_y = 2; mean SW 0.596)
    "gmm_nfe100": Preset(
        overrides={"steps": 100, "cg_iters": 10, "chain_noise": 0.0056},
        task="matrix",
        source="dipswarm tune experiments/configs/tune_gmm_nfe100_cdps.yaml",
    ),
}


@register(presets=CDPS_PRESETS)
class CDPS(VPGridSolver):
    """C-DPS (Mohajer Hamidi et al. 2025) for linear operators and pixel priors."""

    name = "cdps"
    config_class = CDPSConfig
    latent = False
    linear_only = True
    config: CDPSConfig

    def __init__(self, config: SolverConfig | None = None) -> None:
        super().__init__(config)
        self._chain_std: dict[Operator, float] = {}  # rho per problem's operator, set by init

    def beta(self, s: int) -> float:
        """beta_s = 1 - ab_s / ab_{s-1} of the step from level s to s - 1."""
        return 1.0 - float(self.levels[s]) / float(self.levels[s - 1])

    def _init(
        self, generators: list[torch.Generator], indices: list[int], y: torch.Tensor
    ) -> State:
        state = self._start(generators, indices, y)
        assert state.y is not None
        y_like = state.y.expand(len(indices), *state.y.shape[1:])
        state.extra["y_t"] = self.chain_top(y_like, particle_randn(generators, y_like))
        return state

    def _start(
        self, generators: list[torch.Generator], indices: list[int], y: torch.Tensor
    ) -> State:
        """The grid, each problem's rho and x_S ~ N(0, I) (no chain yet)."""
        prior = self.prior
        operator = self.operator
        assert prior is not None and operator is not None
        self.levels = ddpm_levels(prior, self.config, self.config.steps)
        self._chain_std = {part: self.chain_noise_std(part) for part, _ in operator.row_groups()}
        like = torch.empty(len(indices), *prior.shape, dtype=prior.dtype, device=prior.device)
        x = particle_randn(generators, like)
        return State(
            x=x,
            x0=torch.zeros_like(x),
            generators=generators,
            indices=indices,
            status=torch.zeros(len(indices), dtype=torch.long, device=x.device),
            y=y.to(device=x.device, dtype=x.dtype),
        )

    def chain_top(self, y_like: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """y_S = sqrt(ab_S) y + sqrt(1 - ab_S) rho noise for the run's rows."""
        assert self.operator is not None
        ab = float(self.levels[-1])
        rho = self._rho(self.operator, y_like)
        return math.sqrt(ab) * y_like + math.sqrt(1 - ab) * rho * noise

    def _update(self, rows: Rows, k: int) -> Update:
        """Level s = S - k to s - 1: bridge draw of y_{s-1}, then the Gaussian reverse step."""
        x_new, x0, y_prev = self.reverse_step(
            rows.x,
            rows.extra["y_t"],
            rows.y,
            self.config.steps - k,
            rows.generators,
            rows.force,
            rows.operator,
        )
        return Update(x_new, x0, {"y_t": y_prev})

    def reverse_step(
        self,
        x: torch.Tensor,
        y_s: torch.Tensor,
        y: torch.Tensor,
        s: int,
        gens: list[torch.Generator],
        force: torch.Tensor | None = None,
        operator: Operator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_{s-1}, clean estimate, y_{s-1}) for particles ``x`` at level ``s``; ``operator``:
        theirs (default: the run's)."""
        with torch.no_grad():
            y_prev = self.bridge(y_s, y, s, gens, operator)
            move = self.move(x, y_prev, s, gens, force, operator)
        return move.x, move.x0, y_prev

    def move(
        self,
        x: torch.Tensor,
        y_prev: torch.Tensor,
        s: int,
        gens: list[torch.Generator],
        force: torch.Tensor | None = None,
        operator: Operator | None = None,
    ) -> Move:
        """x_{s-1} ~ N(mu, Lambda^-1) given y_{s-1} (NaN rows where the denoiser failed)."""
        op = self._linear(operator)
        x_prime, shift, denoised, broken = self.prior_terms(x, s, op)
        target = y_prev - shift
        mu = self.conditioned_mean(x_prime, target, s, op, force)
        x_new = mu + self.transition_noise(x, s, gens, op)
        x0 = x_new / math.sqrt(float(self.levels[s - 1])) if s == 1 else denoised
        rows = broken.view(-1, *([1] * (x.dim() - 1)))
        x_new = torch.where(rows, math.nan, x_new)
        return Move(x_new, torch.where(rows, math.nan, x0), x_prime, target)

    @property
    def chain_std(self) -> float:
        """rho of the run, whose problems must share one (after ``init``)."""
        values = set(self._chain_std.values())
        if len(values) != 1:
            raise SolverInputError(
                f"{self.name}: the run's problems have {len(values)} chain noise levels; "
                "use chain_noise_std(operator) for one of them"
            )
        return values.pop()

    def _rho(self, operator: Operator, like: torch.Tensor) -> float | torch.Tensor:
        """rho of the rows of ``operator``: a float, or per row shaped to broadcast on ``like``."""
        rho = per_row(operator, self._chain_std, like)
        return rho if isinstance(rho, float) else rho.view(-1, *([1] * (like.dim() - 1)))

    def _precision(
        self, s: int, operator: Operator, like: torch.Tensor
    ) -> tuple[float, float | torch.Tensor]:
        """(c, Sigma) of the step from level s: Lambda = c I + A^T A / Sigma (Sigma per row of
        ``like`` when the rows' problems differ in rho)."""
        ab, beta = float(self.levels[s - 1]), self.beta(s)
        noise = max(operator.sigma, self.config.min_noise)
        return (1 - beta) / beta, ab * noise**2 + (1 - ab) * self._rho(operator, like) ** 2

    def chain_noise_std(self, operator: Operator | None = None) -> float:
        """rho, the std of the measurement chain's increments of one problem's ``operator``
        (default: the run's), by power iteration for ||A||."""
        op, prior, config = self._linear(operator), self.prior, self.config
        assert prior is not None
        if config.chain_noise_units == "absolute":
            return config.chain_noise
        like = torch.empty(1, *prior.shape, dtype=prior.dtype, device=prior.device)
        return config.chain_noise * math.sqrt(largest_eigenvalue(op.normal, like))

    def _linear(self, operator: Operator | None) -> LinearOperator:
        """``operator`` (a problem's, for rows of several problems) or else the run's."""
        op = self.operator if operator is None else operator
        assert isinstance(op, LinearOperator)
        return op

    def _solve(self, rhs: torch.Tensor, s: int, op: Operator) -> torch.Tensor:
        """Lambda^-1 rhs by CG, started at rhs / c (exact on the null space of A)."""
        c, sigma = self._precision(s, op, rhs)
        assert isinstance(op, LinearOperator)

        def precision(v: torch.Tensor) -> torch.Tensor:
            return c * v + op.normal(v) / sigma

        return cg(precision, rhs, x0=rhs / c, tol=self.config.cg_tol, max_iter=self.config.cg_iters)

    def transition_mean(
        self,
        x: torch.Tensor,
        y_prev: torch.Tensor,
        s: int,
        force: torch.Tensor | None = None,
        operator: Operator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu, D(x_t), non-finite rows): Lambda mu = c x_t' + A^T (y_{s-1} - b) / Sigma + force."""
        op = self._linear(operator)
        x_prime, shift, denoised, broken = self.prior_terms(x, s, op)
        return self.conditioned_mean(x_prime, y_prev - shift, s, op, force), denoised, broken

    def prior_terms(
        self, x: torch.Tensor, s: int, operator: Operator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t', b, D(x_t), non-finite rows) at level s: the prior transition's mean x_t' and
        the measurement offset b = (1 - ab_{s-1}) A s(x_t), one denoiser call."""
        prior, op = self.prior, self._linear(operator)
        assert prior is not None
        ab_s, ab, beta = float(self.levels[s]), float(self.levels[s - 1]), self.beta(s)
        denoised = prior.denoise(x / math.sqrt(ab_s), level_sigma(prior, ab_s))
        broken = bad_rows(denoised)
        denoised = zero_rows(denoised, broken)
        score = (math.sqrt(ab_s) * denoised - x) / (1 - ab_s)
        if self.config.prior_mean == "ddpm":
            x_prime = (x + beta * score) / math.sqrt(1 - beta)
        else:
            x_prime = x / math.sqrt(1 - beta)
        return x_prime, (1 - ab) * op(score), denoised, broken

    def conditioned_mean(
        self,
        x_prime: torch.Tensor,
        target: torch.Tensor,
        s: int,
        operator: Operator,
        force: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """mu with Lambda mu = c x_t' + A^T target / Sigma + force (target = y_{s-1} - b)."""
        op = self._linear(operator)
        c, sigma = self._precision(s, op, x_prime)
        rhs = c * x_prime + op.adjoint(target) / sigma
        if force is not None:
            rhs = rhs + force
        return self._solve(rhs, s, op)

    def transition_noise(
        self,
        like: torch.Tensor,
        s: int,
        gens: list[torch.Generator],
        operator: Operator | None = None,
    ) -> torch.Tensor:
        """v ~ N(0, Lambda^-1) (PW-CG): solve Lambda v = sqrt(c) e1 + A^T e2 / sqrt(Sigma)."""
        op = self._linear(operator)
        c, sigma = self._precision(s, op, like)
        e1 = particle_randn(gens, like)
        e2 = particle_randn(gens, torch.empty(like.shape[0], *op.output_shape, dtype=like.dtype))
        z = math.sqrt(c) * e1 + op.adjoint(e2.to(like.device)) / _sqrt(sigma)
        return self._solve(z, s, op)

    def bridge(
        self,
        y_s: torch.Tensor,
        y: torch.Tensor,
        s: int,
        gens: list[torch.Generator],
        operator: Operator | None = None,
    ) -> torch.Tensor:
        """y_{s-1} ~ q(y_{s-1} | y_s, y_0 = y), the DDPM posterior of the measurement chain."""
        mean, std = self.bridge_moments(y_s, y, s, operator)
        return mean + std * particle_randn(gens, y_s)

    def bridge_moments(
        self, y_s: torch.Tensor, y: torch.Tensor, s: int, operator: Operator | None = None
    ) -> tuple[torch.Tensor, float | torch.Tensor]:
        """(mean, std) of the bridge q(y_{s-1} | y_s, y_0 = y); std per row when rho is."""
        op = self._linear(operator)
        ab_s, ab = float(self.levels[s]), float(self.levels[s - 1])
        beta = self.beta(s)
        mean = (math.sqrt(ab) * beta * y + math.sqrt(1 - beta) * (1 - ab) * y_s) / (1 - ab_s)
        var = (1 - ab) * beta / (1 - ab_s) * self._rho(op, y_s) ** 2
        return mean, _sqrt(var)

    def check_problem(self, prior: Prior, operator: Operator, y: torch.Tensor) -> None:
        super().check_problem(prior, operator, y)
        if not isinstance(operator, LinearOperator):
            raise SolverInputError(
                f"{self.name} needs a LinearOperator (adjoint, normal); {operator.name} is not one"
            )


def _sqrt(value: float | torch.Tensor) -> float | torch.Tensor:
    """The square root of a number or of per-row numbers."""
    return math.sqrt(value) if isinstance(value, float) else value.sqrt()
