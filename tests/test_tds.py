"""TDS / Latent-TDS: twist, weights and consistency in closed form on a single-Gaussian prior.

With a one-component mixture N(mu, c^2 I) the denoiser is exact and linear,
x0_hat(x, s) = mu + rho_s (x - mu) with rho_s = c^2 / (c^2 + s^2), and with a matrix operator
every quantity of the sampler is Gaussian: the twist, its gradient, the densities of the prior
transition and of the proposal, and the law of the discretised prior chain's output, hence the
exact posterior that the weighted particles target (``chain_posterior``).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import MultivariateNormal

import operators
import solvers
from operators.matrix import MatrixOperator
from solvers.base import LOG_WEIGHT, STATUS_NONFINITE
from solvers.priors.gmm import GaussianMixture, LinearDecoderPrior
from solvers.tds import DENOISED, TDS, TWIST, TWIST_GRAD
from tests.problem_batches import phase_shared

F64 = torch.float64
MU = torch.tensor([[1.0, -0.5]], dtype=F64)
C = 1.5  # prior std
A = torch.tensor([[1.0, 0.5]], dtype=F64)
SIGMA_Y = 0.5
Y = torch.tensor([[3.0]], dtype=F64)


def _prior() -> GaussianMixture:
    return GaussianMixture(MU, torch.ones(1, dtype=F64), std=C)


def _operator(matrix: torch.Tensor = A, sigma: float = SIGMA_Y) -> MatrixOperator:
    return MatrixOperator(matrix, sigma=sigma)


def _denoised(x: torch.Tensor, s: float) -> torch.Tensor:
    return MU + C**2 / (C**2 + s**2) * (x - MU)


def _twist(x: torch.Tensor, s: float, scale: float, inflation: float) -> tuple[torch.Tensor, ...]:
    """(log g, grad log g) of lambda log N(y; A x0_hat, (sigma_y^2 + (c s)^2) I), by hand."""
    var = SIGMA_Y**2 + (inflation * s) ** 2
    mean = _denoised(x, s) @ A.T
    law = MultivariateNormal(mean, var * torch.eye(1, dtype=F64))
    grad = C**2 / (C**2 + s**2) * ((Y - mean) @ A) / var
    return scale * law.log_prob(Y), scale * grad


def _run(solver: TDS, prior, operator, y, n: int, seed: int, steps: int | None = None):
    state = solver.init(prior, operator, y, n, seed)
    for k in range(solver.num_steps if steps is None else steps):
        state = solver.step(state, k)
    return state


def test_twist_and_its_gradient_are_the_closed_form() -> None:
    solver = solvers.build("tds", num_steps=20, twist_scale=0.7, inflation=0.3)
    state = _run(solver, _prior(), _operator(), Y, 5, 0, steps=6)
    for j, x in ((0, state.x * 40.0), (6, state.x), (15, state.x / 3)):
        log_g, grad, denoised, image = solver.twist(x, j, _operator(), Y)
        want, want_grad = _twist(x, solver.sigmas[j], 0.7, 0.3)
        torch.testing.assert_close(log_g, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(denoised, _denoised(x, solver.sigmas[j]), rtol=1e-12, atol=1e-12)
        assert torch.equal(image, denoised)
        assert torch.equal(solver.denoised(x, j), denoised)
    # the state caches the twist of its own x at its level
    want, want_grad = _twist(state.x, solver.sigmas[6], 0.7, 0.3)
    torch.testing.assert_close(state.extra[TWIST], want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.extra[TWIST_GRAD], want_grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.extra[DENOISED], _denoised(state.x, solver.sigmas[6]))


@pytest.mark.parametrize("with_force", [False, True])
def test_incremental_weight_is_the_explicit_density_ratio(with_force: bool) -> None:
    """log p(x'|x) + log g'(x') - log g(x) - log q(x'|x) from torch.distributions densities."""
    scale, inflation = 0.7, 0.3
    solver = solvers.build("tds", num_steps=20, twist_scale=scale, inflation=inflation)
    state = _run(solver, _prior(), _operator(), Y, 5, 0, steps=7)
    k, x = 7, state.x
    s, s_next = solver.sigmas[k], solver.sigmas[k + 1]
    force = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    new = solver.step(state, k, force=force if with_force else None)
    log_g, grad = _twist(x, s, scale, inflation)
    log_g_next, _ = _twist(new.x, s_next, scale, inflation)
    mean = _denoised(x, s) + (s_next**2 / s**2) * (x - _denoised(x, s))
    v = s_next**2 * (s**2 - s_next**2) / s**2
    shift = v * (grad + force if with_force else grad)
    cov = v * torch.eye(2, dtype=F64)
    log_p = MultivariateNormal(mean, cov).log_prob(new.x)
    log_q = MultivariateNormal(mean + shift, cov).log_prob(new.x)
    want = log_p + log_g_next - log_g - log_q
    torch.testing.assert_close(new.extra[LOG_WEIGHT], want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(solver.log_weight(new), want, rtol=1e-10, atol=1e-10)
    assert want.std() > 0.1  # the weights differ between particles: the check can fail


def test_last_step_is_the_tweedie_estimate_weighted_by_the_likelihood() -> None:
    solver = solvers.build("tds", num_steps=10, twist_scale=0.7, inflation=0.3)
    state = _run(solver, _prior(), _operator(), Y, 4, 2, steps=9)
    s = solver.sigmas[9]
    last = solver.step(state, 9)
    x_final = _denoised(state.x, s)
    torch.testing.assert_close(last.x, x_final, rtol=0, atol=1e-14)
    assert torch.equal(solver.result(last), last.x)
    log_lik = MultivariateNormal(x_final @ A.T, SIGMA_Y**2 * torch.eye(1, dtype=F64)).log_prob(Y)
    want = log_lik - _twist(state.x, s, 0.7, 0.3)[0]
    torch.testing.assert_close(last.extra[LOG_WEIGHT], want, rtol=1e-10, atol=1e-10)


def test_initial_weight_is_the_first_twist_and_nfe_is_one_call_per_step() -> None:
    solver = solvers.build("tds", num_steps=12, inflation=0.5)
    prior = _prior()
    state = solver.init(prior, _operator(), Y, 3, 1)
    torch.testing.assert_close(
        state.extra[LOG_WEIGHT], _twist(state.x, solver.sigmas[0], 1, 0.5)[0]
    )
    result = solver.sample(prior, _operator(), Y, n=3, seed=1)
    assert result.nfe == 12 and result.status == ["ok"] * 3
    assert result.log_weights is not None and result.log_weights.dtype == F64


def chain_posterior(sigmas: list[float], operator: MatrixOperator, y: torch.Tensor):
    """(mean, covariance, log p(y)) of the discretised chain's output given y, exactly.

    Deviations e = x - mu obey e' = alpha e + sqrt(v) xi with alpha = (1 - r) rho + r,
    r = s'^2 / s^2 (the ancestral mean is linear in x), from e_0 ~ N(-mu, (1 + s_0^2) I); the
    last step is e_K = rho_{K-1} e_{K-1}. So x_K ~ N(m, V I), and the posterior is Gaussian.
    """
    mean, var = -MU[0], 1.0 + sigmas[0] ** 2
    for s, s_next in itertools.pairwise(sigmas[:-1]):
        rho, r = C**2 / (C**2 + s**2), s_next**2 / s**2
        alpha = (1 - r) * rho + r
        mean, var = alpha * mean, alpha**2 * var + s_next**2 * (s**2 - s_next**2) / s**2
    rho = C**2 / (C**2 + sigmas[-2] ** 2)
    m, V = MU[0] + rho * mean, rho**2 * var
    Am, sigma2 = operator.A.to(F64), operator.sigma**2
    precision = torch.eye(2, dtype=F64) / V + Am.T @ Am / sigma2
    cov = torch.linalg.inv(precision)
    post_mean = cov @ (m / V + Am.T @ y[0] / sigma2)
    predictive = MultivariateNormal(Am @ m, V * Am @ Am.T + sigma2 * torch.eye(len(y[0])))
    return post_mean, cov, predictive.log_prob(y[0])


def _weighted_run(inflation: float, n: int = 4000):
    """(samples, log-weights, ESS, exact posterior mean, variance, log p(y)) of one TDS run."""
    solver = solvers.build("tds", num_steps=50, inflation=inflation)
    operator = _operator()
    result = solver.sample(_prior(), operator, Y, n=n, seed=0)
    mean, cov, log_evidence = chain_posterior(solver.sigmas, operator, Y)
    assert result.log_weights is not None and result.status == ["ok"] * n
    w = torch.softmax(result.log_weights, 0)
    ess = float(1 / w.pow(2).sum())
    return result.samples, result.log_weights, ess, mean, cov.diagonal(), log_evidence


def test_weighted_particles_estimate_the_exact_posterior() -> None:
    """With an inflated twist (any twist gives a consistent sampler), self-normalised estimates
    of the posterior mean and variance from 4000 weighted particles match the exact posterior
    of the discretised chain; the unweighted particles miss it by over 3x the tolerance (so
    wrong weights fail); the mean weight estimates p(y) (the log-normalisers are kept).

    Tolerances, 5 standard errors: the self-normalised estimate of a mean has a standard error
    of about sqrt(Var / ESS), of a Gaussian variance Var sqrt(2 / ESS), and log mean(W) of
    about sqrt(1 / ESS - 1 / N) (delta method). Measured: ESS about 2000, errors under 0.6 of
    a standard error.
    """
    n = 4000
    x, log_weights, ess, mean, var, log_evidence = _weighted_run(1.0, n)
    assert ess > 1000
    w = torch.softmax(log_weights, 0)
    est_mean = w @ x
    est_var = w @ (x - est_mean).pow(2)
    tolerance = 5 * (var / ess).sqrt()
    assert ((est_mean - mean).abs() < tolerance).all(), (est_mean, mean, ess)
    assert ((est_var - var).abs() < 5 * var * math.sqrt(2 / ess)).all(), (est_var, var, ess)
    assert ((x.mean(0) - mean).abs() > 3 * tolerance).any(), (x.mean(0), mean)
    estimate = torch.logsumexp(log_weights, 0) - math.log(n)
    assert abs(float(estimate - log_evidence)) < 5 * math.sqrt(1 / ess - 1 / n)


def test_the_plain_twist_is_consistent_but_its_weights_are_heavy_tailed() -> None:
    """The paper's twist (no inflation) over-weights the data at high noise: the weights are
    far from uniform (ESS about 33 of 4000 here) and the weighted mean still matches the exact
    posterior within 5 standard errors sqrt(Var / ESS) (measured: 1.0)."""
    x, log_weights, ess, mean, var, _ = _weighted_run(0.0)
    assert 10 < ess < 400
    est_mean = torch.softmax(log_weights, 0) @ x
    assert ((est_mean - mean).abs() < 5 * (var / ess).sqrt()).all(), (est_mean, mean, ess)


def test_latent_tds_is_pixel_tds_on_the_decoded_problem() -> None:
    """On z ~ N(mu, c^2 I), image = D z + b, the latent twist N(y; A (D x0_hat + b)) is the
    pixel twist of the operator A D with y - A b: same states, weights; samples decoded."""
    D = torch.tensor([[1.3, 0.4], [-0.2, 0.8]], dtype=F64)
    b = torch.tensor([0.3, -1.0], dtype=F64)
    latent_prior = LinearDecoderPrior(MU, torch.ones(1, dtype=F64), D, b, std=C)
    latent = solvers.build("latent_tds", "gmm", num_steps=30, inflation=0.5)
    pixel = solvers.build("tds", "gmm", num_steps=30, inflation=0.5)
    got = latent.sample(latent_prior, _operator(), Y, n=6, seed=4)
    want = pixel.sample(_prior(), _operator(A @ D), Y - b @ A.T, n=6, seed=4)
    assert latent.sigmas == pixel.sigmas
    torch.testing.assert_close(got.samples, want.samples @ D.T + b, rtol=1e-10, atol=1e-10)
    assert got.log_weights is not None and want.log_weights is not None
    torch.testing.assert_close(got.log_weights, want.log_weights, rtol=1e-10, atol=1e-10)
    assert got.nfe == want.nfe == 30


def test_seeded_and_independent_of_the_batch() -> None:
    solver = solvers.build("tds", num_steps=20, inflation=0.5)
    prior, operator = _prior(), _operator()
    first = solver.sample(prior, operator, Y, n=4, seed=7)
    again = solver.sample(prior, operator, Y, n=4, seed=7)
    assert torch.equal(first.samples, again.samples)
    assert first.log_weights is not None and again.log_weights is not None
    assert torch.equal(first.log_weights, again.log_weights)
    state = solver.init(prior, operator, Y, seed=7, indices=[3, 1])
    total = solver.log_weight(state)
    for k in range(solver.num_steps):
        state = solver.step(state, k)
        total = total + solver.log_weight(state)
    torch.testing.assert_close(solver.result(state), first.samples[[3, 1]], rtol=0, atol=1e-12)
    torch.testing.assert_close(total, first.log_weights[[3, 1]], rtol=0, atol=1e-10)


def test_a_batch_of_problems_equals_separate_runs_weights_included() -> None:
    """Two problems with different A and y in one batch (operators.stack_rows): the rows'
    samples and log-weights are those of the separate runs."""
    ops = [_operator(), _operator(torch.tensor([[0.2, -1.0]], dtype=F64))]
    ys, seeds, m = [Y, torch.tensor([[-1.0]], dtype=F64)], [5, 9], 3
    solver = solvers.build("tds", num_steps=15, inflation=0.5)
    separate = [
        solver.sample(_prior(), op, y, n=m, seed=s) for op, y, s in zip(ops, ys, seeds, strict=True)
    ]
    stacked = operators.stack_rows(ops, m)
    y = torch.cat([y.expand(m, 1) for y in ys])
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


def test_a_failed_particle_stops_alone() -> None:
    solver = solvers.build("tds", num_steps=20, inflation=0.5)
    prior, operator = _prior(), _operator()
    clean = _run(solver, prior, operator, Y, 3, 6)
    state = _run(solver, prior, operator, Y, 3, 6, steps=10)
    state.x = state.x.clone()
    state.x[1] = math.nan
    for k in range(10, 20):
        state = solver.step(state, k)
        if k == 10:
            assert solver.log_weight(state)[1] == -math.inf
    assert state.status.tolist() == [0, STATUS_NONFINITE, 0]
    torch.testing.assert_close(state.x0[[0, 2]], clean.x0[[0, 2]], rtol=0, atol=1e-12)
    torch.testing.assert_close(
        state.extra[LOG_WEIGHT][[0, 2]], clean.extra[LOG_WEIGHT][[0, 2]], rtol=0, atol=1e-12
    )


def test_phase_retrieval_runs_with_finite_weights() -> None:
    """Any differentiable operator (no linear_only): |F x| on an analytic image prior."""
    assert not TDS.linear_only
    batch = phase_shared(latent=False, k=1)
    solver = solvers.build("tds", num_steps=10, inflation=0.5)
    result = solver.sample(batch.prior, batch.operators[0], batch.ys[0], n=3)
    assert result.status == ["ok"] * 3 and result.nfe == 10
    assert result.log_weights is not None and torch.isfinite(result.log_weights).all()
    assert result.log_weights.std() > 0
