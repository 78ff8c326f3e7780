"""Gaussian-mixture prior, its exact posterior, the MCGdiff generator and sliced Wasserstein.

Checks against independent computations: Monte Carlo (self-normalised importance sampling),
naive float64 formulas, autograd, grid quadrature of Bayes' rule, the Kalman form of Gaussian
conditioning, and the perfect-sampler floor of docs/gmm_benchmark.md.
"""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch

import operators
from experiments.gmm_protocol import ExactInstance, exact_coverage
from experiments.metrics import sliced_wasserstein
from operators.random import make_generator
from solvers.priors import PriorInputError
from solvers.priors.base import Prior
from solvers.priors.gmm import (
    GaussianMixture,
    LinearDecoderPrior,
    default_gmm_prior,
    mcgdiff_means,
    mcgdiff_problem,
    mcgdiff_weights,
    random_decoder,
)

F64 = torch.float64


def _small_mixture(d: int = 2, k: int = 3, std: float = 0.8, seed: int = 0) -> GaussianMixture:
    gen = make_generator(seed)
    means = 3 * torch.randn(k, d, generator=gen, dtype=F64)
    weights = torch.rand(k, generator=gen, dtype=F64) + 0.2
    return GaussianMixture(means, weights, std=std)


def _snis(log_w: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-normalised importance estimate of E[f] and its delta-method standard error."""
    w = torch.softmax(log_w, dim=0)
    est = w @ f
    se = (w.pow(2) @ (f - est).pow(2)).sqrt()
    return est, se


# -- the prior ----------------------------------------------------------------------------------


def test_denoiser_matches_importance_sampling_over_prior_draws() -> None:
    prior = _small_mixture()
    sigma = 1.2
    x0 = prior.sample(400_000, make_generator(1))
    x = torch.tensor([[0.5, -1.0], [3.0, 2.0], [-4.0, 1.0]], dtype=F64)
    denoised = prior.denoise(x, sigma)
    for b in range(x.shape[0]):
        log_w = -(x0 - x[b]).pow(2).sum(1) / (2 * sigma**2)
        est, se = _snis(log_w, x0)
        assert bool((se < 0.02).all())  # the check is sharp
        assert bool(((denoised[b] - est).abs() < 5 * se).all()), (denoised[b], est, se)


def test_denoiser_equals_naive_float64_formula() -> None:
    prior = _small_mixture(d=3, k=4, std=0.7, seed=2)
    gen = make_generator(3)
    x = 4 * torch.randn(6, 3, generator=gen, dtype=F64)
    sigma = torch.tensor([0.0, 0.1, 0.5, 1.0, 3.0, 20.0], dtype=F64)
    mu, w, s2 = prior.means, prior.weights, prior.std**2
    for b in range(6):
        v = s2 + sigma[b] ** 2
        dens = w * (2 * math.pi * v) ** -1.5 * torch.exp(-(x[b] - mu).pow(2).sum(1) / (2 * v))
        expected = (dens[:, None] * (mu + s2 / v * (x[b] - mu))).sum(0) / dens.sum()
        got = prior.denoise(x[b : b + 1], sigma[b : b + 1])[0]
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        log_p = prior.log_prob(x[b : b + 1], sigma[b : b + 1])[0]
        torch.testing.assert_close(log_p, dens.sum().log(), rtol=1e-12, atol=1e-12)


def test_denoiser_small_sigma_and_large_d_are_stable() -> None:
    prior = GaussianMixture(mcgdiff_means(800), mcgdiff_weights(800))
    x = torch.randn(5, 800, generator=make_generator(4), dtype=F64) * 30
    assert torch.equal(prior.denoise(x, 0.0), x)
    torch.testing.assert_close(prior.denoise(x, 1e-9), x, rtol=0, atol=1e-12)
    # Near component 7 the responsibilities are one-hot although naive densities would underflow
    # (the other components sit >= 8 sqrt(400) = 160 away).
    near = prior.means[7] + 0.5 * torch.randn(3, 800, generator=make_generator(5), dtype=F64)
    sigma = 0.3
    expected = prior.means[7] + (near - prior.means[7]) / (1 + sigma**2)
    torch.testing.assert_close(prior.denoise(near, sigma), expected, rtol=0, atol=1e-10)
    assert bool(torch.isfinite(prior.log_prob(x, 1e4)).all())
    assert bool(torch.isfinite(prior.score(x, 0.0)).all())
    # float32 in, float32 out, computed in float64 inside
    out32 = prior.denoise(near.float(), sigma)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, expected.float(), rtol=1e-5, atol=1e-4)


def test_score_is_gradient_of_log_prob_and_tweedie() -> None:
    prior = _small_mixture(d=3, k=4, std=1.3, seed=6)
    x = (3 * torch.randn(4, 3, generator=make_generator(7), dtype=F64)).requires_grad_()
    sigma = torch.tensor([0.0, 0.3, 1.0, 5.0], dtype=F64)
    (grad,) = torch.autograd.grad(prior.log_prob(x, sigma).sum(), x)
    score = prior.score(x.detach(), sigma)
    torch.testing.assert_close(score, grad, rtol=1e-10, atol=1e-12)
    tweedie = Prior.score(prior, x.detach()[1:], sigma[1:])  # the inherited (D - x) / sigma^2
    torch.testing.assert_close(score[1:], tweedie, rtol=1e-9, atol=1e-12)
    # The denoiser is differentiable (DPS-style solvers backpropagate through it).
    assert torch.autograd.gradcheck(lambda z: prior.denoise(z, sigma), (x,))


def test_prior_sampling_moments_generator_and_to() -> None:
    prior = _small_mixture(d=2, k=3, std=0.8, seed=8)
    state = torch.get_rng_state()
    x = prior.sample(200_000, make_generator(9))
    assert torch.equal(torch.get_rng_state(), state)  # no global RNG
    assert torch.equal(x, prior.sample(200_000, make_generator(9)))
    mean = prior.weights @ prior.means
    centred = prior.means - mean
    cov = prior.std**2 * torch.eye(2, dtype=F64) + centred.T @ (prior.weights[:, None] * centred)
    se = (cov.diagonal() / x.shape[0]).sqrt()
    assert bool(((x.mean(0) - mean).abs() < 5 * se).all())
    torch.testing.assert_close(torch.cov(x.T), cov, rtol=0.02, atol=0.02)
    assert set(prior.state_dict()) == {"means", "weights"}
    prior32 = prior.to(torch.float32)
    assert prior32.means.dtype == prior32.weights.dtype == prior32.dtype == torch.float32
    assert prior32.sample(3, 0).dtype == torch.float32


def test_prior_rejects_bad_input() -> None:
    with pytest.raises(PriorInputError, match="shape"):
        GaussianMixture(torch.zeros(3, 2), torch.ones(2))
    with pytest.raises(PriorInputError, match=">= 0"):
        GaussianMixture(torch.zeros(2, 2), torch.tensor([1.0, -1.0]))
    with pytest.raises(PriorInputError, match="sigma"):
        _small_mixture().denoise(torch.zeros(1, 2), -1.0)


# -- the exact posterior --------------------------------------------------------------------------


def _posterior_case() -> tuple[GaussianMixture, operators.Operator, torch.Tensor]:
    prior = _small_mixture(d=2, k=3, std=1.3, seed=10)
    A = torch.tensor([[0.8, -0.5]], dtype=F64)
    operator = operators.build("matrix", A=A, sigma=0.6)
    y = operator.measure(prior.sample(1, make_generator(11)), make_generator(12))
    return prior, operator, y


def test_posterior_matches_importance_sampling() -> None:
    prior, operator, y = _posterior_case()
    post = prior.posterior(operator, y)
    x = prior.sample(400_000, make_generator(13))
    log_w = operator.log_likelihood(x, y)
    mean, mean_se = _snis(log_w, x)
    assert bool(((post.mean - mean).abs() < 5 * mean_se).all()), (post.mean, mean, mean_se)
    outer = ((x - post.mean)[:, :, None] * (x - post.mean)[:, None, :]).flatten(1)
    second, second_se = _snis(log_w, outer)
    expected = post.total_covariance + torch.outer(post.mean - mean, post.mean - mean)
    assert bool(((expected.flatten() - second).abs() < 5 * second_se + 1e-3).all())


def test_posterior_log_prob_is_bayes_rule_on_a_grid() -> None:
    prior, operator, y = _posterior_case()
    post = prior.posterior(operator, y)
    step = 0.04
    t = torch.arange(-25, 25, step, dtype=F64)
    grid = torch.cartesian_prod(t, t)
    log_joint = prior.log_prob(grid) + operator.log_likelihood(grid, y)
    log_evidence = torch.logsumexp(log_joint, 0) + 2 * math.log(step)
    points = 3 * torch.randn(10, 2, generator=make_generator(14), dtype=F64)
    expected = prior.log_prob(points) + operator.log_likelihood(points, y) - log_evidence
    torch.testing.assert_close(post.log_prob(points), expected, rtol=0, atol=1e-8)


def test_posterior_samples_match_analytic_moments() -> None:
    problem = mcgdiff_problem(4, 2, 3)
    post = problem.posterior
    n = 100_000
    x = post.sample(n, make_generator(15))
    assert x.shape == (n, 4) and x.dtype == F64
    cov = post.total_covariance
    var = cov.diagonal()
    assert bool(((x.mean(0) - post.mean).abs() < 5 * (var / n).sqrt()).all())
    cov_se = ((var[:, None] * var[None, :] + cov.pow(2)) / n).sqrt()
    assert bool(((torch.cov(x.T) - cov).abs() < 6 * cov_se + 1e-9).all())
    assert float(post.weights.sum()) == pytest.approx(1.0, abs=1e-12)
    assert post.covariance.shape == (4, 4) and post.means.shape == (25, 4)


def test_posterior_rejects_unsupported_operators() -> None:
    prior, operator, y = _posterior_case()
    with pytest.raises(PriorInputError, match="matrix"):
        prior.posterior(operators.build("identity", shape=(2,), sigma=0.1), y)
    with pytest.raises(PriorInputError, match="sigma > 0"):
        prior.posterior(operators.build("matrix", A=operator.A, sigma=0.0), y)
    with pytest.raises(PriorInputError, match="one measurement"):
        prior.posterior(operator, y.repeat(2, 1))
    with pytest.raises(PriorInputError, match="shape"):
        prior.posterior(operators.build("matrix", A=torch.ones(1, 3), sigma=0.1), y)


# -- the MCGdiff generator ----------------------------------------------------------------------


def test_mcgdiff_problem_follows_the_recipe() -> None:
    d, d_y, seed = 8, 2, 5
    problem = mcgdiff_problem(d, d_y, seed)
    A, sigma_y = problem.operator.A, problem.operator.sigma
    # Redraw the recipe's numbers from the same generator, in the documented order.
    gen = make_generator(seed)
    A0 = torch.randn(d_y, d, generator=gen, dtype=F64)
    s = torch.rand(d_y, generator=gen, dtype=F64).sort(descending=True).values
    assert sigma_y == float(torch.rand((), generator=gen, dtype=F64)) * float(s[0])
    x_star = GaussianMixture(mcgdiff_means(d), mcgdiff_weights(d)).sample(1, gen)
    eps = torch.randn(1, d_y, generator=gen, dtype=F64)
    torch.testing.assert_close(torch.linalg.svdvals(A), s, rtol=1e-12, atol=1e-14)
    assert bool(((s > 0) & (s < 1)).all()) and 0 <= sigma_y <= float(s.max())
    U, S0, _ = torch.linalg.svd(A0, full_matrices=False)  # A keeps A0's singular vectors
    torch.testing.assert_close(A, U @ torch.diag(s / S0) @ U.T @ A0, rtol=1e-10, atol=1e-12)
    assert torch.equal(problem.x_star, x_star)
    torch.testing.assert_close(problem.y, x_star @ A.T + sigma_y * eps, rtol=1e-12, atol=1e-12)
    assert problem.y.shape == (1, d_y) and problem.x_star.shape == (1, d)


def test_mcgdiff_problem_is_deterministic_and_weights_depend_on_d_only() -> None:
    a, b, c = mcgdiff_problem(8, 1, 0), mcgdiff_problem(8, 1, 0), mcgdiff_problem(8, 4, 1)
    assert torch.equal(a.operator.A, b.operator.A) and torch.equal(a.y, b.y)
    assert torch.equal(a.posterior.means, b.posterior.means)
    assert not torch.equal(a.operator.A[0], c.operator.A[0])
    assert torch.equal(a.prior.weights, c.prior.weights)
    assert torch.equal(a.prior.means, default_gmm_prior(8).means)
    assert not torch.equal(a.prior.weights, mcgdiff_problem(80, 1, 0).prior.weights)
    assert float(a.prior.weights.sum()) == pytest.approx(1.0, abs=1e-12)
    assert a.prior.means.shape == (25, 8) and a.prior.std == 1.0
    svals = torch.linalg.svdvals(c.operator.A)
    assert bool(((svals > 0) & (svals < 1)).all()) and c.operator.sigma <= float(svals.max())


def test_mcgdiff_means_grid() -> None:
    means = mcgdiff_means(8)
    grid = [-16.0, -8.0, 0.0, 8.0, 16.0]
    expected = torch.tensor([[a, b] * 4 for a in grid for b in grid], dtype=F64)
    assert torch.equal(means, expected)
    with pytest.raises(PriorInputError, match="even"):
        mcgdiff_problem(7, 1, 0)
    with pytest.raises(PriorInputError, match="d_y"):
        mcgdiff_problem(4, 5, 0)


def test_mcgdiff_problem_dtype() -> None:
    problem = mcgdiff_problem(8, 2, 0, dtype=torch.float32)
    assert problem.prior.dtype == problem.operator.A.dtype == problem.y.dtype == torch.float32
    assert problem.posterior.means.dtype == F64
    x = problem.prior.sample(4, 0)
    assert problem.operator(x).shape == (4, 2)


# -- sliced Wasserstein -------------------------------------------------------------------------


def test_sliced_wasserstein_basic_properties() -> None:
    gen = make_generator(20)
    a = torch.randn(500, 3, generator=gen, dtype=F64)
    b = torch.randn(500, 3, generator=gen, dtype=F64) + 0.5
    assert sliced_wasserstein(a, a) == 0.0
    assert sliced_wasserstein(a, a[torch.randperm(500, generator=gen)]) == 0.0
    value = sliced_wasserstein(a, b)
    permuted = sliced_wasserstein(b[torch.randperm(500, generator=gen)], a.flip(0))
    assert value == pytest.approx(permuted, rel=1e-12) and value > 0
    assert value == sliced_wasserstein(a, b)  # deterministic without a generator
    # N == M: the mean absolute difference of the sorted projections
    dirs = torch.randn(100, 3, generator=make_generator(21), dtype=F64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    direct = ((a @ dirs.T).sort(0).values - (b @ dirs.T).sort(0).values).abs().mean()
    assert sliced_wasserstein(a, b, 100, make_generator(21)) == pytest.approx(float(direct))
    with pytest.raises(ValueError, match="dimension"):
        sliced_wasserstein(a, b[:, :2])


def test_sliced_wasserstein_in_one_dimension_is_w1() -> None:
    gen = make_generator(22)
    x = torch.randn(300, 1, generator=gen, dtype=F64)
    assert sliced_wasserstein(x, x + 0.7, n_slices=5) == pytest.approx(0.7, rel=1e-12)
    z = 2 * torch.randn(517, 1, generator=gen, dtype=F64) + 1  # N != M
    exact = scipy.stats.wasserstein_distance(x[:, 0].numpy(), z[:, 0].numpy())
    assert sliced_wasserstein(x, z, n_slices=3) == pytest.approx(exact, rel=1e-12)


def test_perfect_sampler_floor_on_mcgdiff_instances() -> None:
    """Two independent 2k-sample exact posterior draws: the floor of docs/gmm_benchmark.md."""
    floors = {}
    for d_y in (1, 4):
        values = []
        for seed in range(10):
            post = mcgdiff_problem(8, d_y, seed).posterior
            gen = make_generator(1000 + seed)
            a, b = post.sample(2000, gen), post.sample(2000, gen)
            values.append(sliced_wasserstein(a, b, 100, make_generator(seed)))
        floors[d_y] = sum(values) / len(values)
    # Fact sheet: d_y = 1 about 0.17-0.19, d_y = 4 about 0.035-0.054 (20 instances).
    assert 0.1 < floors[1] < 0.3, floors
    assert 0.02 < floors[4] < 0.08, floors
    assert floors[4] < floors[1]


def test_exact_coverage_of_exact_prior_and_importance_weighted_draws() -> None:
    """Instance 0 (d = 8, d_y = 1): 2k exact posterior draws cover 2k further ones at the
    nominal levels (about l (N - 1) / (N + 1), within 0.02: the draws' own noise); 20k prior
    draws do not (0.29 at 50%), but weighted by the likelihood (importance sampling, about
    1300 effective draws) they do."""
    instance = ExactInstance.mcgdiff(8, 1, 0)
    truths, n = instance.reference(2000), 2000
    exact = exact_coverage(instance.exact(n), None, truths)
    prior = instance.prior_draws(20_000)
    problem = instance.problem
    log_likelihood = problem.operator.log_likelihood(prior, problem.y.expand(len(prior), -1))
    unweighted = exact_coverage(prior, None, truths)
    weighted = exact_coverage(prior, log_likelihood, truths)
    for level, name in ((0.5, "coverage_50"), (0.9, "coverage_90")):
        assert abs(exact[name] - level * (n - 1) / (n + 1)) < 0.02, exact
        assert abs(weighted[name] - level) < 0.02, weighted
    assert unweighted["coverage_50"] < 0.4, unweighted
    with pytest.raises(ValueError, match="posterior_samples"):
        exact_coverage(prior, None, truths[:, :4])


# -- the linear-decoder (latent) test bed -------------------------------------------------------


def _latent_case(d: int = 4) -> tuple[LinearDecoderPrior, operators.Operator, torch.Tensor]:
    gen = make_generator(30)
    base = _small_mixture(d=d, k=3, std=0.9, seed=31)
    D, b = random_decoder(d, gen)
    prior = LinearDecoderPrior(base.means, base.weights, D, b, std=0.9)
    A = torch.randn(2, d, generator=gen, dtype=F64) / math.sqrt(d)
    operator = operators.build("matrix", A=A, sigma=0.3)
    y = operator.measure(prior.decode(prior.sample(1, gen)), gen)
    return prior, operator, y


def test_linear_decoder_round_trip() -> None:
    prior, _, _ = _latent_case()
    assert prior.is_latent and not _small_mixture().is_latent
    x = torch.randn(5, 4, generator=make_generator(32), dtype=F64)
    torch.testing.assert_close(prior.decode(prior.encode(x)), x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(prior.encode(prior.decode(x)), x, rtol=1e-12, atol=1e-12)
    with pytest.raises(PriorInputError, match="decoder"):
        _small_mixture().decode(x[:, :2])


def test_latent_posterior_pushed_through_decode_is_the_pixel_posterior() -> None:
    prior, operator, y = _latent_case()
    pushed = prior.posterior(operator, y).pushforward(prior.decoder, prior.bias)
    # Pixel space: x ~ sum_i w_i N(D mu_i + b, std^2 D D^T); condition in Kalman form.
    A, D, v = operator.A, prior.decoder, operator.sigma**2
    means = prior.means @ D.T + prior.bias
    prior_cov = prior.std**2 * D @ D.T
    C = A @ prior_cov @ A.T + v * torch.eye(2, dtype=F64)
    gain = prior_cov @ A.T @ torch.linalg.inv(C)
    residual = y - means @ A.T
    torch.testing.assert_close(pushed.means, means + residual @ gain.T, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(pushed.covariance, prior_cov - gain @ A @ prior_cov)
    log_w = prior.weights.log() + torch.distributions.MultivariateNormal(
        torch.zeros(2, dtype=F64), C
    ).log_prob(residual)
    torch.testing.assert_close(pushed.weights, torch.softmax(log_w, 0), rtol=1e-9, atol=1e-12)


def test_latent_posterior_with_scaled_orthogonal_decoder_matches_isotropic_prior() -> None:
    """D = c Q makes the pixel prior isotropic with std c * std: compare with its posterior."""
    d, c, std = 4, 1.7, 0.9
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=make_generator(33), dtype=F64))
    base = _small_mixture(d=d, k=3, std=std, seed=34)
    bias = torch.arange(d, dtype=F64)
    latent = LinearDecoderPrior(base.means, base.weights, c * q, bias, std=std)
    pixel = GaussianMixture(base.means @ (c * q).T + bias, base.weights, std=c * std)
    operator = operators.build("matrix", A=torch.ones(1, d, dtype=F64), sigma=0.4)
    y = torch.tensor([2.5], dtype=F64)
    expected = pixel.posterior(operator, y)
    pushed = latent.posterior(operator, y).pushforward(latent.decoder, latent.bias)
    torch.testing.assert_close(pushed.means, expected.means)
    torch.testing.assert_close(pushed.weights, expected.weights)
    torch.testing.assert_close(pushed.covariance, expected.covariance)
    points = pixel.sample(5, 35)
    torch.testing.assert_close(pushed.log_prob(points), expected.log_prob(points))


def test_latent_mcgdiff_problem_shares_the_plain_instance() -> None:
    plain, latent = mcgdiff_problem(8, 2, 7), mcgdiff_problem(8, 2, 7, latent=True)
    assert isinstance(latent.prior, LinearDecoderPrior)
    rebuilt = default_gmm_prior(8, latent=True, dtype="float32")  # from a spec: depends on d only
    assert rebuilt.dtype == torch.float32
    assert torch.equal(rebuilt.decoder, latent.prior.decoder.float())
    assert torch.equal(plain.operator.A, latent.operator.A)
    assert plain.operator.sigma == latent.operator.sigma
    torch.testing.assert_close(latent.prior.encode(latent.x_star), plain.x_star)
    noise_plain = plain.y - plain.operator(plain.x_star)
    torch.testing.assert_close(latent.y - latent.operator(latent.x_star), noise_plain)
    assert latent.posterior.means.shape == (25, 8)
