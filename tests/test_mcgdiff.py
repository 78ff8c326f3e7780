"""MCGdiff: increments, target and consistency in closed form on a single-Gaussian prior.

With a one-component mixture N(mu, c^2 I) the denoiser is exact and linear,
x0_hat(x, s) = mu + rho_s (x - mu) with rho_s = c^2 / (c^2 + s^2), so in the SVD basis of a
matrix operator every spectral coordinate runs its own linear-Gaussian chain; the sampler's
target (the DDPM chain with each observation inserted as a bridge at its level tau_i,
solvers/mcgdiff.py) is then Gaussian and is computed here from the joint law of the chain's
states (``bridge_target``). The test quantities are built from torch.linalg.svd and
torch.distributions densities, independently of operators.svd and of the solver's formulas.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

import operators
import solvers
from operators.matrix import MatrixOperator
from solvers import SolverInputError
from solvers.base import LOG_WEIGHT, Rows, Update
from solvers.mcgdiff import TWIST, MCGdiff
from solvers.priors.gmm import GaussianMixture
from tests.operator_cases import build_small
from tests.problem_batches import IMAGE, ImageMixture

F64 = torch.float64
MU = torch.tensor([[1.0, -0.5, 0.25]], dtype=F64)  # exact in float32 too
C = 1.5  # prior std
A = torch.tensor([[1.0, 0.5, -0.2], [0.3, -1.0, 0.4]], dtype=F64)
Y = torch.tensor([[3.0, -1.0]], dtype=F64)
KAPPA = 1e-4
ZERO = torch.tensor(0.0, dtype=F64)


def _prior() -> GaussianMixture:
    return GaussianMixture(MU, torch.ones(1, dtype=F64), std=C)


def _denoised(x: torch.Tensor, s: float) -> torch.Tensor:
    return MU + C**2 / (C**2 + s**2) * (x - MU)


class Spectrum:
    """The SVD of a matrix operator and the observation's spectral quantities, by hand."""

    def __init__(self, op: MatrixOperator, y: torch.Tensor, sigmas: list[float]) -> None:
        u, s, vh = torch.linalg.svd(op.A.to(F64), full_matrices=True)
        self.v, self.s, self.sigmas = vh.T, s, sigmas
        self.o = (u.T @ y[0]) / s
        self.tau2 = (op.sigma / s) ** 2
        # crossing index j: s_(j+1) <= tau < s_j (-1 when tau >= s_0)
        self.j = [sum(1 for t in sigmas if t**2 > t2) - 1 for t2 in self.tau2.tolist()]

    def step_var(self, k: int) -> float:
        s, s_next = self.sigmas[k], self.sigmas[k + 1]
        return s_next**2 * (s**2 - s_next**2) / s**2

    def bridge(self, i: int) -> tuple[float, float]:
        """(w, beta) of observation i's bridge between its levels j and j + 1."""
        j, t2 = self.j[i], float(self.tau2[i])
        a, b = t2 - self.sigmas[j + 1] ** 2, self.sigmas[j] ** 2 - t2
        return a / (a + b), a * b / (a + b)

    def twist_var(self, i: int, k: int) -> float:
        """The chain's variance from level k to tau_i, plus kappa (1 + tau_i^2)."""
        j, t2 = self.j[i], float(self.tau2[i])
        w, beta = self.bridge(i)
        path = sum(self.step_var(m) for m in range(k, j)) + (1 - w) ** 2 * self.step_var(j)
        return path + beta + KAPPA * (1 + t2)

    def log_twist(self, x: torch.Tensor, k: int) -> torch.Tensor:
        c, total = x @ self.v, torch.zeros(x.shape[0], dtype=F64)
        for i in range(len(self.s)):
            if 0 <= k <= self.j[i] and k < len(self.sigmas) - 1:
                law = Normal(self.o[i], math.sqrt(self.twist_var(i, k)))
                total = total + law.log_prob(c[:, i])
        return total

    def log_bridge(self, x: torch.Tensor, x_next: torch.Tensor, k: int) -> torch.Tensor:
        """sum over the observations crossing between levels k and k + 1 of log L_i."""
        total = torch.zeros(x.shape[0], dtype=F64)
        for i in range(len(self.s)):
            if self.j[i] == k:
                w, beta = self.bridge(i)
                mixed = w * (x @ self.v[:, i]) + (1 - w) * (x_next @ self.v[:, i])
                total = total + Normal(mixed, math.sqrt(beta)).log_prob(self.o[i])
        return total


def _run(solver: MCGdiff, op, y, n: int, seed: int, steps: int):
    state = solver.init(_prior(), op, y, n, seed)
    for k in range(steps):
        state = solver.step(state, k)
    return state


@pytest.mark.parametrize("with_force", [False, True])
def test_every_increment_is_the_explicit_density_ratio(with_force: bool) -> None:
    """log p(x'|x) + log (g_(k+1) prod L)(x') - log g_k(x) - log q(x'|x) at every step, with q
    formed as a dense Gaussian (prior transition x force tilt x potentials x bridges); the start
    and the deterministic last step too. sigma_y = 0.05 makes both observations cross between
    the last two positive levels."""
    op = MatrixOperator(A, sigma=0.05)
    solver = solvers.build("mcgdiff", num_steps=20, kappa=KAPPA)
    state = solver.init(_prior(), op, Y, 6, 0)
    sp = Spectrum(op, Y, solver.sigmas)
    assert sp.j == [18, 18]
    torch.testing.assert_close(state.extra[TWIST], sp.log_twist(state.x, 0), rtol=0, atol=1e-12)
    start = 1 + solver.sigmas[0] ** 2
    want = sum(
        Normal(ZERO, math.sqrt(start + sp.twist_var(i, 0))).log_prob(sp.o[i]) for i in range(2)
    )
    torch.testing.assert_close(state.extra[LOG_WEIGHT], want.expand(6), rtol=0, atol=1e-12)
    gen = torch.Generator().manual_seed(3)
    for k in range(solver.num_steps):
        x, s, s_next = state.x, solver.sigmas[k], solver.sigmas[k + 1]
        force = torch.randn(x.shape, generator=gen, dtype=F64) if with_force else None
        new = solver.step(state, k, force=force)
        if s_next == 0:  # x_K = x0_hat; weight sum L / g_(K-1)
            torch.testing.assert_close(new.x, _denoised(x, s), rtol=0, atol=1e-13)
            want = sp.log_bridge(x, new.x, k) - sp.log_twist(x, k)
        else:
            v = sp.step_var(k)
            d = _denoised(x, s)
            mean = d + s_next**2 / s**2 * (x - d)
            # q per spectral coordinate: N(m + v f, v) times the Gaussian factors of c'
            c_mean, c_new = mean @ sp.v, new.x @ sp.v
            precision = torch.full_like(c_mean, 1 / v)
            shift = c_mean / v + (0.0 if force is None else force @ sp.v)
            for i in range(2):
                if k + 1 <= sp.j[i]:  # g_(k+1): an observation o_i of c' with variance r
                    r = sp.twist_var(i, k + 1)
                    precision[:, i] += 1 / r
                    shift[:, i] += sp.o[i] / r
                elif k == sp.j[i]:  # L_i: an observation o_i - w c of (1 - w) c', variance beta
                    w, beta = sp.bridge(i)
                    precision[:, i] += (1 - w) ** 2 / beta
                    shift[:, i] += (1 - w) * (sp.o[i] - w * (x @ sp.v[:, i])) / beta
            q = Normal(shift / precision, precision.rsqrt())
            p = MultivariateNormal(mean, v * torch.eye(3, dtype=F64))
            terms = [
                p.log_prob(new.x),
                sp.log_twist(new.x, k + 1),
                sp.log_bridge(x, new.x, k),
                -sp.log_twist(x, k),
                -q.log_prob(c_new).sum(1),
            ]
            want = sum(terms)
            torch.testing.assert_close(new.extra[TWIST], sp.log_twist(new.x, k + 1))
        # round-off: a small multiple of eps times the largest term
        scale = max(1.0, *(float(t.abs().max()) for t in terms)) if s_next else 1.0
        torch.testing.assert_close(new.extra[LOG_WEIGHT], want, rtol=0, atol=1e-12 * scale)
        torch.testing.assert_close(solver.log_weight(new), want, rtol=0, atol=1e-12 * scale)
        if 10 <= k <= max(sp.j):  # the weights differ between particles: the check can fail
            assert want.std() > 1e-3
        state = new
    assert torch.equal(solver.result(state), state.x)


def test_an_observation_noisier_than_the_start_is_a_bridge_on_the_start() -> None:
    """tau_i >= s_0: L_i = N(o_i; c_(0,i), tau_i^2 - s_0^2) enters the start's proposal and
    weight, and the coordinate is never guided after."""
    u, _, vh = torch.linalg.svd(A, full_matrices=False)
    weak = u @ torch.diag(torch.tensor([1.0, 1e-4], dtype=F64)) @ vh  # tau_2 = 500 > s_0
    op = MatrixOperator(weak, sigma=0.05)
    solver = solvers.build("mcgdiff", num_steps=20, kappa=KAPPA)
    state = solver.init(_prior(), op, Y, 5, 1)
    sp = Spectrum(op, Y, solver.sigmas)
    assert sp.j[1] == -1 and sp.j[0] >= 0
    start = 1 + solver.sigmas[0] ** 2
    bridge = float(sp.tau2[1]) - solver.sigmas[0] ** 2
    want = Normal(ZERO, math.sqrt(start + sp.twist_var(0, 0))).log_prob(sp.o[0]) + Normal(
        0.0, math.sqrt(start + bridge)
    ).log_prob(sp.o[1])
    torch.testing.assert_close(state.extra[LOG_WEIGHT], want.expand(5), rtol=1e-12, atol=0)
    # the start's coordinate 2 is drawn around the prior-weighted observation
    c = solvers.build("mcgdiff", num_steps=20).init(_prior(), op, Y, 4000, 2).x @ sp.v
    law_mean = float(sp.o[1]) * start / (start + bridge)
    assert abs(float(c[:, 1].mean()) - law_mean) < 5 * math.sqrt(start / 4000)


def bridge_target(sigmas: list[float], op: MatrixOperator, y: torch.Tensor):
    """(mean, covariance) of x_K under the sampler's target, exactly.

    Per spectral coordinate, deviations e = c - mu_c obey e' = alpha e + sqrt(v) xi with
    alpha = (1 - r) rho + r, r = s'^2 / s^2, from c_0 ~ N(0, 1 + s_0^2), and the last step is
    e_K = rho_(K-1) e_(K-1): the states (c_0, ..., c_K) are jointly Gaussian. An observed
    coordinate's factor L_i = N(o_i; w c_j + (1 - w) c_(j+1), beta) is a Gaussian observation of
    a linear combination of them, so c_K given it is Gaussian (conditioning formula).
    """
    sp = Spectrum(op, y, sigmas)
    mu_c = sp.v.T @ MU[0]
    n_levels = len(sigmas)
    means, variances = [], []
    for i in range(3):
        mean = torch.zeros(n_levels, dtype=F64)
        cov = torch.zeros(n_levels, n_levels, dtype=F64)
        mean[0], cov[0, 0] = -mu_c[i], 1 + sigmas[0] ** 2
        for k in range(n_levels - 1):
            s, s_next = sigmas[k], sigmas[k + 1]
            rho, r = C**2 / (C**2 + s**2), s_next**2 / s**2
            alpha = (1 - r) * rho + r
            mean[k + 1] = alpha * mean[k]
            cov[k + 1, : k + 1] = alpha * cov[k, : k + 1]
            cov[: k + 1, k + 1] = cov[k + 1, : k + 1]
            cov[k + 1, k + 1] = alpha**2 * cov[k, k] + s_next**2 * (s**2 - s_next**2) / s**2
        mean = mean + mu_c[i]
        if i < len(sp.s):
            coef = torch.zeros(n_levels, dtype=F64)
            if sp.j[i] == -1:
                coef[0], beta = 1.0, float(sp.tau2[i]) - sigmas[0] ** 2
            else:
                w, beta = sp.bridge(i)
                coef[sp.j[i]], coef[sp.j[i] + 1] = w, 1 - w
            gain = (cov[-1] @ coef) / (coef @ cov @ coef + beta)
            means.append(mean[-1] + gain * (sp.o[i] - coef @ mean))
            variances.append(cov[-1, -1] - gain * (cov[-1] @ coef))
        else:
            means.append(mean[-1])
            variances.append(cov[-1, -1])
    return sp.v @ torch.stack(means), sp.v @ torch.diag(torch.stack(variances)) @ sp.v.T


def smc(solver: MCGdiff, op, y, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(samples, normalised weights) of an SMC run: the solver's moves and weights, systematic
    resampling when the ESS falls below n / 2 (the resampled particles get fresh streams)."""
    state = solver.init(_prior(), op, y, n, seed)
    log_w = solver.log_weight(state)
    gen = torch.Generator().manual_seed(seed + 12345)
    for k in range(solver.num_steps):
        state = solver.step(state, k)
        log_w = log_w + solver.log_weight(state)
        w = torch.softmax(log_w, 0)
        if k < solver.num_steps - 1 and 1 / float(w.pow(2).sum()) < n / 2:
            points = (torch.rand(1, generator=gen, dtype=F64) + torch.arange(n)) / n
            index = torch.searchsorted(w.cumsum(0), points).clamp(max=n - 1)
            state = state.select(index)
            state.reseed(range(n), [seed * 100003 + 1000 * (k + 1) + i for i in range(n)])
            log_w = torch.zeros(n, dtype=F64)
    return solver.result(state), torch.softmax(log_w, 0)


def test_weighted_particles_estimate_the_target_and_broken_weights_do_not() -> None:
    """8 independent SMC runs of 1000 particles (sigma_y = 0.05, 20 steps): the mean over
    runs of the self-normalised posterior mean and variance matches the exact target of the
    discretised chain (``bridge_target``) within 5 standard errors of that mean, the standard
    error estimated from the 8 runs' spread (a t statistic with 7 degrees of freedom exceeds
    5 with probability 0.0016; measured: at most 0.6 of the tolerance). The target, not the
    posterior: the DDPM chain at 20 steps is far from it (variances 0.23 vs 0.31 along one
    axis). The proposal's particles without weights and a variant that forgets to divide by
    g_k(x) miss it by over 3 tolerances, 15 standard errors (measured: 3.7 and 3.6)."""
    op = MatrixOperator(A, sigma=0.05)
    config = solvers.build("mcgdiff", num_steps=20).config
    runs: dict[str, list[torch.Tensor]] = {"mcgdiff": [], "unweighted": [], "broken": []}
    for seed in range(8):
        for name, cls in (("mcgdiff", MCGdiff), ("broken", _Broken)):
            x, w = smc(cls(config), op, Y, 1000, seed)
            mean = w @ x
            runs[name].append(torch.cat([mean, w @ (x - mean).pow(2)]))
        plain = MCGdiff(config).sample(_prior(), op, Y, n=1000, seed=seed).samples
        runs["unweighted"].append(torch.cat([plain.mean(0), plain.var(0)]))
    reference = MCGdiff(config)
    reference.init(_prior(), op, Y)
    mean, cov = bridge_target(reference.sigmas, op, Y)
    want = torch.cat([mean, cov.diagonal()])
    estimates = torch.stack(runs["mcgdiff"])
    tolerance = 5 * estimates.std(0) / math.sqrt(8)
    assert ((estimates.mean(0) - want).abs() < tolerance).all(), (estimates.mean(0), want)
    for name in ("unweighted", "broken"):
        off = (torch.stack(runs[name]).mean(0) - want).abs()
        assert (off > 3 * tolerance).any(), (name, off, tolerance)


class _Broken(MCGdiff):
    """MCGdiff with a wrong weight: log g_k(x) is not divided out."""

    def _update(self, rows: Rows, k: int) -> Update:
        update = super()._update(rows, k)
        assert update.log_weight is not None
        update.log_weight = update.log_weight + rows.extra[TWIST]
        return update


def test_operators_without_an_svd_are_refused_with_the_supported_ones() -> None:
    prior = ImageMixture()
    solver = solvers.build("mcgdiff", num_steps=5)
    blur = build_small("motion_blur", shape=IMAGE, kernel_size=3)
    y = torch.zeros(1, *IMAGE, dtype=F64)
    with pytest.raises(SolverInputError, match=r"cheap SVD .*super_resolution.*not separable"):
        solver.init(prior, blur, y)
    phase = build_small("phase_retrieval", shape=IMAGE)
    with pytest.raises(SolverInputError, match="needs a linear operator"):
        solver.init(prior, phase, torch.zeros(1, *phase.output_shape, dtype=F64))


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("inpaint_random", {"drop": 0.5}),
        ("inpaint_box", {"box": 2, "margin": 1}),
        ("super_resolution", {"factor": 2}),
        ("gaussian_blur", {"kernel_size": 3, "std": 1.0}),
    ],
)
def test_image_operators_run_with_finite_weights_at_one_call_per_step(name, params) -> None:
    prior = ImageMixture()
    op = build_small(name, shape=IMAGE, sigma=0.05, **params)
    x = prior.sample(1, torch.Generator().manual_seed(0))
    y = op.measure(x, torch.Generator().manual_seed(1))
    result = solvers.build("mcgdiff", num_steps=12).sample(prior, op, y, n=4, seed=2)
    assert result.status == ["ok"] * 4 and result.nfe == 12
    assert result.log_weights is not None and torch.isfinite(result.log_weights).all()
    assert result.log_weights.std() > 0


def test_a_batch_of_problems_equals_separate_runs_weights_included() -> None:
    """Two problems with different A and y in one batch (operators.stack_rows): each problem's
    rows use its own SVD; samples and log-weights are those of the separate runs."""
    other = torch.tensor([[0.2, -1.0, 0.7], [1.1, 0.1, 0.3]], dtype=F64)
    ops = [MatrixOperator(A, sigma=0.1), MatrixOperator(other, sigma=0.1)]
    ys, seeds, m = [Y, torch.tensor([[-1.0, 0.5]], dtype=F64)], [5, 9], 3
    solver = solvers.build("mcgdiff", num_steps=15)
    separate = [
        solver.sample(_prior(), op, y, n=m, seed=s) for op, y, s in zip(ops, ys, seeds, strict=True)
    ]
    stacked = operators.stack_rows(ops, m)
    y = torch.cat([y.expand(m, 2) for y in ys])
    state = solver.init(
        _prior(), stacked, y, seed=[s for s in seeds for _ in range(m)], indices=list(range(m)) * 2
    )
    total = solver.log_weight(state)
    for k in range(solver.num_steps):
        state = solver.step(state, k)
        total = total + solver.log_weight(state)
    want = torch.cat([r.samples for r in separate])
    torch.testing.assert_close(solver.result(state), want, rtol=1e-10, atol=1e-10)
    weights = torch.cat([r.log_weights for r in separate if r.log_weights is not None])
    torch.testing.assert_close(total, weights, rtol=1e-10, atol=1e-10)
