"""MCGdiff: Monte Carlo guided diffusion in the SVD basis of a linear-Gaussian measurement.

Cardoso, Janati, Le Corff, Moulines, "Monte Carlo guided diffusion for Bayesian linear inverse
problems", ICLR 2024. A weighted solver (solvers/base.py): each particle moves by a proposal
that is Gaussian per spectral coordinate and reports the log incremental importance weight of
its move, in closed form (docs/solvers/mcgdiff.md).

**Spectral coordinates.** y = A x + sigma_y n with A = U diag(s) V^T (``operators.svd``):
c = V^T x, and each observed coordinate i (s_i > 0) sees o_i = (U^T y)_i / s_i = c0_i +
tau_i n_i with tau_i = sigma_y / s_i (sigma_y: the operator's, at least ``min_noise``). That is
coordinate i of the diffusion's forward process at noise level tau_i: the paper's reduction of
the noisy problem to a noiseless one, where the observation *is* the diffusion state
x_(tau_i, i). The diffusion noise is isotropic, so the prior transition is N(m, v I) in any
orthonormal basis, and everything below acts on one coordinate at a time.

**Prior chain (EDM form).** Levels s_0 > ... > s_K = 0: the respaced DDPM grid of DPS
(``solvers.dps.prior_sigmas``). Start x ~ N(0, (1 + s_0^2) I); the step s -> s' < s is the DDPM
ancestral transition with the Tweedie estimate x0_hat = D(x, s):

    p(x' | x) = N(m, v I),   m = x0_hat + (s'^2 / s^2)(x - x0_hat),   v = s'^2 (s^2 - s'^2) / s^2,

and the last step (s' = 0) is x_K = x0_hat.

**Target.** The chain conditioned on each observed coordinate passing through its observation
at level tau_i. The paper conditions on x_(j, i) = o_i at the grid level j nearest to tau_i;
here the observation is inserted at tau_i itself, between the levels s_(j+1) <= tau_i < s_j
around it: the forward process makes x_tau a Gaussian bridge between x_(j+1) and x_j, so the
target is the path density times, per coordinate,

    L_i = N(o_i; w c_(j,i) + (1 - w) c_(j+1,i), a b / (a + b)),
    a = tau_i^2 - s_(j+1)^2,  b = s_j^2 - tau_i^2,  w = a / (a + b)

(for tau_i >= s_0, L_i = N(o_i; c_(0,i), tau_i^2 - s_0^2) on the start). With the true reverse
process this is exactly p(x_0 | y) for any grid (no rounding of tau_i to a level); with the
DDPM chain it is the paper's target up to that rounding, exact as the steps grow.

**Potentials.** Before its crossing (levels k <= j), coordinate i is guided by the paper's
forward-noised observation

    g_(k,i)(x) = N(c_i; o_i, s_k^2 - tau_i^2 + kappa (1 + tau_i^2)),

whose variance shrinks towards kappa (1 + tau_i^2) as s_k approaches tau_i, where the
coordinate becomes "noiseless"; after its crossing it is free (no potential). g_k(x) is the
product over the coordinates guided at level k.

**Proposal and weight.** q(x' | x) ∝ p(x' | x) g_(k+1)(x') prod_(i crossing) L_i exp(<f, x'>),
with f the ensemble's force (0 without one): per coordinate, with m_f = c(m) + v c(f),

- guided at k + 1: N(m_f + G (o - m_f), v r / (v + r)), G = v / (v + r), r = g_(k+1)'s variance,
  normaliser Z = N(o; m_f, v + r);
- crossing (k = j): L is a Gaussian observation lin = o - w c_(k,i) of h c' (h = 1 - w) with
  variance beta = a b / (a + b): N(m_f + G (lin - h m_f), v beta / (h^2 v + beta)),
  G = h v / (h^2 v + beta), Z = N(lin; h m_f, h^2 v + beta);
- otherwise N(m_f, v), Z = 1.

The incremental log-weight log p + log (g_(k+1) prod L)(x') - log g_k(x) - log q does not depend
on x' but through the force's tilt:

    log w = sum_i log Z_i + <f, m - x'> + v |f|^2 / 2 - log g_k(x).

The start x ~ N(0, (1 + s_0^2) I) is proposed the same way (times g_0, and L_i for tau_i >= s_0),
with log-weight sum_i log Z_i, the same for every particle of one problem. The last step is
deterministic for p and q alike; its log-weight is sum_(i crossing) log L_i - log g_(K-1)(x).
Every Gaussian normaliser is kept, so the mean of the exponentiated total weights is an
unbiased estimate of the target's normaliser.

Cost: one denoiser call per step and particle (no vector-Jacobian product), NFE = num_steps;
two spectral transforms per step (V^T of the ancestral mean, V of the proposal), a third
(V^T x) at the steps where some coordinate crosses. g_k(x) is cached in ``state.extra`` (it
moves with the particle); ``state.x0`` is x0_hat of the state before the latest step (zeros
before the first step; no network call in ``init``), and the sample x_K after the last step.
Linear operators with an SVD from ``operators.svd.svd_of`` only (matrix, inpainting, identity,
super-resolution, Gaussian blur); a batch of several problems (``operators.stack_rows``) uses
each problem's SVD on its rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from operators import Operator, OperatorInputError
from operators.svd import SUPPORTED, OperatorSVD, svd_of
from solvers.base import (
    LOG_WEIGHT,
    Rows,
    Solver,
    SolverInputError,
    State,
    Update,
    measurement_rows,
    particle_randn,
)
from solvers.config import Order, choice, hyper
from solvers.dps import check_image_shape, prior_sigmas
from solvers.preset import Preset
from solvers.priors.base import Prior
from solvers.registry import register
from solvers.schedules import BETA_SCHEDULES, DDPMScheduleConfig

PAPER = "MCGdiff (Cardoso et al., ICLR 2024)"
F64 = torch.float64
TWIST = "twist"  # extra key: log g_k(x) of the particle's current state


@dataclass(frozen=True)
class MCGdiffConfig(DDPMScheduleConfig):
    """Hyperparameters of MCGdiff (pixel priors); the DDPM table's from ``DDPMScheduleConfig``."""

    num_steps: int = hyper(
        100, 1, 10000, log=True, source=f"{PAPER}: 100 steps (GMM experiments and images)"
    )
    kappa: float = hyper(
        1e-4,
        1e-8,
        1.0,
        log=True,
        source=f"{PAPER}: kappa, the potential's variance at the pinning level (1e-4)",
    )
    min_noise: float = hyper(
        1e-3, 1e-8, 1.0, log=True, source="ours: floor on sigma_y so p(y | x) is a density"
    )
    beta_schedule: str = choice("linear", BETA_SCHEDULES, source="DDPM linear (ADM)")

    orders = (
        *DDPMScheduleConfig.orders,
        Order("num_steps", "train_steps", why="the grid respaces the training timesteps"),
    )


UNOBSERVED = -2  # crossing index of a coordinate without observation (never guided)


@dataclass(frozen=True)
class Spectral:
    """One problem's spectral data: its SVD, sigma_y, tau^2 per coordinate (0 where not
    observed), the crossing index j with s_(j+1) <= tau < s_j (-1: tau >= s_0; UNOBSERVED) and
    ``offset``, the part of the potential's variance that does not depend on the level."""

    svd: OperatorSVD
    sigma_y: float
    tau2: torch.Tensor
    cross: torch.Tensor
    offset: torch.Tensor


# "gmm": `python -m experiments.benchmarks.gmm --solvers mcgdiff:gmm --instances 2 --samples
# 500 --seed 1` (instances 1000-1001, not the test ones), mean SW / floor over the 6 cells:
# 3.7 / 3.1 / 2.9 at 20 / 50 / 100 steps (kappa 1e-4); kappa 1e-2 / 1e-1 at 20 steps: 4.6 / 3.5.
# 20 steps, the paper's short GMM setting, costs the least.
MCGDIFF_PRESETS: dict[str, Preset] = {
    "gmm": Preset(
        overrides={"num_steps": 20},
        task="matrix",
        source="ours: GMM benchmark check of steps and kappa, N = 500 (docs/solvers/mcgdiff.md)",
    ),
}


@register(presets=MCGDIFF_PRESETS)
class MCGdiff(Solver):
    """Monte Carlo guided diffusion (Cardoso et al., ICLR 2024) for pixel priors and linear
    operators with a cheap SVD."""

    name = "mcgdiff"
    config_class = MCGdiffConfig
    latent = False
    linear_only = True
    weighted = True
    config: MCGdiffConfig

    def __init__(self, config: MCGdiffConfig | None = None) -> None:
        super().__init__(config)
        self.sigmas: list[float] = []
        # per problem operator, by identity; the operator is kept so that its id stays its own
        self._spectral: dict[int, tuple[Operator, Spectral]] = {}

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

    def check_problem(self, prior: Prior, operator: Operator, y: torch.Tensor) -> None:
        """The base checks, then an SVD for every problem's operator (``operators.svd``)."""
        super().check_problem(prior, operator, y)
        for part, _ in operator.row_groups():
            try:
                svd_of(part)
            except OperatorInputError as err:
                raise SolverInputError(
                    f"{self.name} needs a linear operator with a cheap SVD "
                    f"({', '.join(SUPPORTED)}): {err}"
                ) from err

    # -- the spectral data of a problem --------------------------------------------------------
    def spectral(self, part: Operator) -> Spectral:
        """The spectral data of one problem's operator (computed once per operator and run)."""
        cached = self._spectral.get(id(part))
        if cached is not None and cached[0] is part:
            return cached[1]
        assert self.prior is not None
        svd = svd_of(part)
        sigma_y = max(part.sigma, self.config.min_noise)
        s = svd.singular_values
        observed = s > 0
        tau2 = torch.where(observed, sigma_y**2 / s.pow(2).clamp_min(1e-300), 0.0)
        ascending = torch.tensor(self.sigmas[::-1], dtype=F64).pow(2)
        at_or_below = torch.searchsorted(ascending, tau2.contiguous(), right=True)
        cross = ascending.shape[0] - at_or_below - 1  # levels above tau^2, minus one
        cross = torch.where(observed, cross, torch.full_like(cross, UNOBSERVED))
        # the potential's variance at level k: remaining(k) + offset (module docstring)
        j = cross.clamp(0, len(self.sigmas) - 2)
        w, beta = self._bridge_at(tau2, j)
        steps = torch.tensor(self._transition_variances(), dtype=F64)
        remaining = self._remaining()
        offset = (
            (1.0 - w).pow(2) * steps[j]
            + beta
            - torch.tensor(remaining, dtype=F64)[j]
            + self.config.kappa * (1.0 + tau2)
        )
        device = self.prior.device
        entry = Spectral(svd, sigma_y, tau2.to(device), cross.to(device), offset.to(device))
        self._spectral[id(part)] = (part, entry)
        return entry

    def _transition_variances(self) -> list[float]:
        """v_k = s_(k+1)^2 (s_k^2 - s_(k+1)^2) / s_k^2 of the steps k = 0..K-1 (0 at the last)."""
        return [
            s_next**2 * (s**2 - s_next**2) / s**2
            for s, s_next in zip(self.sigmas[:-1], self.sigmas[1:], strict=True)
        ]

    def _remaining(self) -> list[float]:
        """sum_(l >= k) v_l for k = 0..K-1: the chain's variance from level k to the end."""
        out, total = [], 0.0
        for v in reversed(self._transition_variances()):
            total += v
            out.append(total)
        return out[::-1]

    def _observation(self, data: Spectral, y: torch.Tensor) -> torch.Tensor:
        """o = (U^T y) / s on the observed coordinates (0 elsewhere), float64."""
        s = data.svd.singular_values.to(y.device)
        ybar = data.svd.u_t(y.to(F64))
        return torch.where(s > 0, ybar / s.clamp_min(1e-300), 0.0)

    def _twist_variance(self, data: Spectral, k: int) -> torch.Tensor:
        """g_k's variance per coordinate (used where guided, k <= j): the chain's variance from
        level k to the observation, sum_(k <= l < j) v_l + (1 - w)^2 v_j + beta, plus
        kappa (1 + tau^2)."""
        return self._remaining()[k] + data.offset

    def _bridge(self, data: Spectral, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(w, beta) of L between levels k and k + 1 (used where j = k)."""
        return self._bridge_at(data.tau2, torch.full_like(data.cross, k))

    def _bridge_at(self, tau2: torch.Tensor, j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(w, beta) = (a / (a + b), a b / (a + b)) of L between levels j and j + 1."""
        levels = torch.tensor(self.sigmas, dtype=F64, device=tau2.device).pow(2)
        above, below = levels[j], levels[j + 1]
        a, b = tau2 - below, above - tau2
        total = above - below
        return a / total, a * b / total

    # -- the run ---------------------------------------------------------------------------------
    def _init(
        self, generators: list[torch.Generator], indices: list[int], y: torch.Tensor
    ) -> State:
        prior, operator = self.prior, self.operator
        assert prior is not None and operator is not None
        dtype, device = prior.dtype, prior.device
        zeros = torch.zeros(len(indices), *prior.shape, dtype=dtype, device=device)
        check_image_shape(self.name, zeros, operator)
        self.sigmas = prior_sigmas(self.config, prior)
        self._spectral = {}
        y = y.to(device=device, dtype=dtype)
        xi = particle_randn(generators, zeros).to(F64)
        start = 1.0 + self.sigmas[0] ** 2
        x = torch.empty_like(zeros)
        log_w = torch.empty(len(indices), dtype=F64, device=device)
        twist = torch.empty_like(log_w)
        for part, at in _groups(operator, len(indices), device):
            data = self.spectral(part)
            o = self._observation(data, measurement_rows(y, at))
            guided, before = data.cross >= 0, data.cross == -1
            # a Gaussian observation of c with variance r: g_0, or L on the start
            r = torch.where(before, data.tau2 - self.sigmas[0] ** 2, self._twist_variance(data, 0))
            seen = guided | before
            gain = torch.where(seen, start / (start + r), 0.0)
            c = gain * o + (start * (1.0 - gain)).sqrt() * xi[at]
            x[at] = data.svd.v(c).to(dtype)
            log_w[at] = _log_normal(torch.zeros_like(c), o, start + r, seen)
            twist[at] = _log_normal(c, o, r, guided)
        return State(
            x=x,
            x0=zeros,
            generators=generators,
            indices=indices,
            status=torch.zeros(len(indices), dtype=torch.long),
            extra={LOG_WEIGHT: log_w, TWIST: twist},
            y=y,
        )

    def _update(self, rows: Rows, k: int) -> Update:
        """The guided move from s_k to s_{k+1} and its log incremental weight (module doc)."""
        prior = self.prior
        assert prior is not None
        s, s_next = self.sigmas[k], self.sigmas[k + 1]
        x = rows.x.detach()
        with torch.no_grad():
            denoised = prior.denoise(x, s)
        log_g = rows.extra[TWIST]
        if s_next == 0:  # deterministic for p and q: x_K = x0_hat
            return self._last(rows, denoised, k)
        v = s_next**2 * (s**2 - s_next**2) / s**2
        mean = denoised + (s_next**2 / s**2) * (x - denoised)
        xi = particle_randn(rows.generators, x).to(F64)
        x_next = torch.empty_like(x)
        log_w = torch.empty_like(log_g)
        twist = torch.empty_like(log_g)
        for part, at in _groups(rows.operator, x.shape[0], x.device):
            data = self.spectral(part)
            o = self._observation(data, measurement_rows(rows.y, at))
            c_mean = data.svd.v_t(mean[at].to(F64))
            force = None if rows.force is None else data.svd.v_t(rows.force[at].to(F64))
            m_f = c_mean if force is None else c_mean + v * force
            guided, crossing = data.cross >= k + 1, data.cross == k
            # each coordinate sees lin = h c' + noise of variance e (h = 0: not observed)
            r = self._twist_variance(data, k + 1)
            lin, h, e = o, guided.to(F64), torch.where(guided, r, 1.0)
            if bool(crossing.any()):
                w, beta = self._bridge(data, k)
                c_now = data.svd.v_t(x[at].to(F64))
                lin = torch.where(crossing, o - w * c_now, lin)
                h, e = torch.where(crossing, 1.0 - w, h), torch.where(crossing, beta, e)
            seen = guided | crossing
            total = h.pow(2) * v + e
            gain = h * v / total
            c = m_f + gain * (lin - h * m_f) + (v * e / total).sqrt() * xi[at]
            x_next[at] = data.svd.v(c).to(x.dtype)
            value = _log_normal(h * m_f, lin, total, seen)
            if force is not None:
                tilt = force * (c_mean - c) + 0.5 * v * force.pow(2)
                value = value + tilt.flatten(1).sum(1)
            log_w[at] = value - log_g[at]
            twist[at] = _log_normal(c, o, r, guided)
        return Update(x_next, denoised, {TWIST: twist}, log_weight=log_w)

    def _last(self, rows: Rows, denoised: torch.Tensor, k: int) -> Update:
        """x_K = x0_hat; log-weight sum_(i crossing) log L_i - log g_(K-1)(x)."""
        log_l = torch.zeros_like(rows.extra[TWIST])
        for part, at in _groups(rows.operator, rows.x.shape[0], rows.x.device):
            data = self.spectral(part)
            crossing = data.cross == k
            if not bool(crossing.any()):
                continue
            o = self._observation(data, measurement_rows(rows.y, at))
            w, beta = self._bridge(data, k)
            mixed = w * data.svd.v_t(rows.x[at].to(F64)) + (1.0 - w) * data.svd.v_t(
                denoised[at].to(F64)
            )
            log_l[at] = _log_normal(mixed, o, beta, crossing)
        zero = torch.zeros_like(log_l)
        return Update(denoised, denoised, {TWIST: zero}, log_weight=log_l - rows.extra[TWIST])


def _groups(
    operator: Operator, n: int, device: torch.device
) -> list[tuple[Operator, torch.Tensor]]:
    """(problem operator, row indices on ``device``) for each problem of a batch of n rows."""
    out = []
    for part, rows in operator.row_groups():
        index = torch.arange(n) if rows is None else rows
        out.append((part, index.to(device)))
    return out


def _log_normal(
    c: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """sum over the ``mask`` coordinates of log N(c; mean, var), per row (float64)."""
    value = -0.5 * (c - mean).pow(2) / var - 0.5 * torch.log(2 * math.pi * var)
    return torch.where(mask, value, 0.0).flatten(1).sum(1)
