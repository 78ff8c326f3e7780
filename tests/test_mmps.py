"""MMPS (solvers/mmps.py): the moment-matched posterior mean against the exact Gaussian
conditional, the sampler against the exact posterior of a Gaussian prior, refusals."""

from __future__ import annotations

import pytest
import torch

import operators
import solvers
from solvers import SolverConfigError, SolverInputError
from solvers.mmps import MMPSConfig, geometric_sigmas
from solvers.priors.gmm import GaussianMixture, mcgdiff_problem
from tests.operator_cases import build_small

F64 = torch.float64
D, D_Y, STD, SIGMA_Y = 6, 3, 1.3, 0.4


def _gaussian_problem(seed: int = 0) -> tuple[GaussianMixture, operators.Operator, torch.Tensor]:
    """A single-Gaussian prior N(mu, STD^2 I) (d = 6), a 3 x 6 matrix operator and one y."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(1, D, generator=gen, dtype=F64)
    prior = GaussianMixture(mu, torch.ones(1, dtype=F64), std=STD)
    A = torch.randn(D_Y, D, generator=gen, dtype=F64)
    op = operators.build("matrix", A=A, sigma=SIGMA_Y)
    y = op.measure(prior.sample(1, gen), gen)
    return prior, op, y


def _exact_posterior_mean(
    prior: GaussianMixture, op: operators.Operator, y: torch.Tensor, x: torch.Tensor, s: float
) -> torch.Tensor:
    """E[x0 | x_t = x, y] for x0 ~ N(mu, STD^2 I), x = x0 + s n, y = A x0 + SIGMA_Y eps."""
    A, mu = op.A, prior.means
    c = 1.0 / (1.0 / STD**2 + 1.0 / s**2)  # Cov[x0 | x_t] = c I
    m = c * (mu / STD**2 + x / s**2)  # E[x0 | x_t]
    gram = c * A @ A.T + SIGMA_Y**2 * torch.eye(D_Y, dtype=F64)
    return m + c * torch.linalg.solve(gram, (y - m @ A.T).T).T @ A


@pytest.mark.parametrize("sigma", [0.05, 0.7, 5.0])
def test_posterior_mean_is_the_exact_gaussian_conditional(sigma: float) -> None:
    """On a Gaussian prior the Tweedie covariance is exact, so with CG run to convergence (d_y
    iterations) the moment-matched mean is the exact conditional mean."""
    prior, op, y = _gaussian_problem()
    solver = solvers.build("mmps", cg_iters=D_Y, cg_tol=1e-14)
    solver.init(prior, op, y, n=5)
    x = torch.randn(5, D, generator=torch.Generator().manual_seed(1), dtype=F64) * 2
    before = prior.nfe
    mean, denoised = solver.posterior_mean(x, sigma, op, y)
    assert prior.nfe - before == 1  # one forward call; the VJPs are not network calls
    torch.testing.assert_close(denoised, prior.denoise(x, sigma), rtol=0, atol=1e-13)
    exact = _exact_posterior_mean(prior, op, y, x, sigma)
    torch.testing.assert_close(mean, exact, rtol=1e-10, atol=1e-10)


def test_one_cg_iteration_is_an_approximation() -> None:
    """The reference's single CG iteration does not solve the 3 x 3 system exactly."""
    prior, op, y = _gaussian_problem()
    x = torch.randn(4, D, generator=torch.Generator().manual_seed(2), dtype=F64)
    solver = solvers.build("mmps", cg_iters=1)
    solver.init(prior, op, y, n=4)
    mean, _ = solver.posterior_mean(x, 0.7, op, y)
    assert (mean - _exact_posterior_mean(prior, op, y, x, 0.7)).abs().max() > 1e-3


def test_ancestral_sampler_draws_the_exact_posterior_of_a_gaussian_prior() -> None:
    """With the exact posterior denoiser (Gaussian prior), ancestral sampling converges to the
    exact posterior N(m, S) as the grid is refined: at 300 steps the mean and covariance of 2000
    samples are within 0.1 sd and 7% of max S_ii (measured: covariance error 11.7% of max S_ii at
    100 steps, 4.2% at 300; Monte Carlo error of a variance about 3%)."""
    prior, op, y = _gaussian_problem(3)
    A = op.A
    S = torch.linalg.inv(torch.eye(D, dtype=F64) / STD**2 + A.T @ A / SIGMA_Y**2)
    m = (prior.means[0] / STD**2 + (A.T @ y[0]) / SIGMA_Y**2) @ S
    solver = solvers.build("mmps", steps=300, eta=1.0, cg_iters=D_Y, cg_tol=1e-14, sigma_min=1e-3)
    samples = solver.sample(prior, op, y, n=2000, seed=0).samples
    sd = S.diagonal().sqrt()
    assert ((samples.mean(0) - m).abs() / sd).max() < 0.1  # MC std of the mean: 0.022 sd
    cov = torch.cov(samples.T)
    torch.testing.assert_close(cov, S, rtol=0, atol=0.07 * float(S.diagonal().max()))


def test_geometric_grid_is_clipped_into_the_prior_range() -> None:
    prior, _, _ = _gaussian_problem()
    prior.sigma_min, prior.sigma_max = 0.1, 50.0
    levels = geometric_sigmas(MMPSConfig(steps=3, sigma_min=1e-3, sigma_max=1e4), prior)
    assert levels == pytest.approx([50.0, 50.0**0.5 * 0.1**0.5, 0.1, 0.0], rel=1e-12)
    assert geometric_sigmas(MMPSConfig(steps=1), prior) == [50.0, 0.0]


def test_refusals_name_the_fix() -> None:
    latent = mcgdiff_problem(8, 2, 0, latent=True)
    with pytest.raises(SolverInputError, match="pixel space"):
        solvers.build("mmps").init(latent.prior, latent.operator, latent.y)
    prior = GaussianMixture(torch.zeros(1, 36, dtype=F64), torch.ones(1, dtype=F64))
    phase = build_small("phase_retrieval", shape=(1, 6, 6))
    with pytest.raises(SolverInputError, match="linear operator"):
        solvers.build("mmps").init(prior, phase, torch.zeros(1, *phase.output_shape, dtype=F64))
    with pytest.raises(SolverConfigError, match="sigma_min"):
        solvers.build("mmps", sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(SolverConfigError, match="cg_iters"):
        solvers.build("mmps", cg_iters=0)
    with pytest.raises(SolverInputError, match="tuned for the 'super_resolution'"):
        p = mcgdiff_problem(8, 2, 0)
        solvers.build("mmps", "digits/super_resolution").init(p.prior, p.operator, p.y)
