"""PiGDM (Song et al., ICLR 2023): guidance vs dense closed forms, refusals, determinism, GMM."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import operators
import solvers
from experiments.metrics import sliced_wasserstein
from operators.random import make_generator
from solvers.base import SolverInputError
from solvers.config import SolverConfigError
from solvers.pigdm import PiGDM
from solvers.priors.base import Prior
from solvers.priors.gmm import GaussianMixture, mcgdiff_problem
from tests.faulty import check_early_failures_stop_only_their_rows

F64 = torch.float64


class AffineDenoiser(Prior):
    """D(x, sigma) = M x / (1 + sigma) + b: a known, non-symmetric Jacobian M / (1 + sigma)."""

    def __init__(self, matrix: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__((matrix.shape[1],), 0.0, 100.0)
        self.register_buffer("M", matrix)
        self.register_buffer("b", b)

    def jacobian(self, sigma: float) -> torch.Tensor:
        return self.M / (1.0 + sigma)

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return (x @ self.M.T) / (1.0 + sigma[:, None]) + self.b


def _matrix_problem(sigma_y: float, d: int = 5, d_y: int = 3, seed: int = 4):
    gen = make_generator(seed)
    A = torch.randn(d_y, d, generator=gen, dtype=F64)
    op = operators.build("matrix", A=A, sigma=sigma_y)
    y = torch.randn(1, d_y, generator=gen, dtype=F64)
    x = 3.0 * torch.randn(4, d, generator=gen, dtype=F64)
    return A, op, y, x, gen


def _step_from(solver: PiGDM, prior: Prior, op, y, x: torch.Tensor, k: int):
    """One step k from the given states x (the solver's grid, its own random streams)."""
    state = solver.init(prior, op, y, n=x.shape[0], seed=0)
    return solver.step(dataclasses.replace(state, x=x.clone()), k)


@pytest.mark.parametrize("weighting", ["r2", "tweedie"])
def test_guidance_is_the_dense_vjp_through_the_cg_weighting(weighting: str) -> None:
    """x0_y = D + w a J^T A^T (r^2 A A^T + sigma_y^2 I)^-1 (y - A D) with a = r^2 or s^2, J
    non-symmetric, and the eta = 0 step x' = x0_y + (s' / s)(x - x0_y), against dense algebra."""
    A, op, y, x, gen = _matrix_problem(0.3)
    M = torch.randn(5, 5, generator=gen, dtype=F64)
    prior = AffineDenoiser(M, torch.randn(5, generator=gen, dtype=F64))
    solver = solvers.build(
        "pigdm",
        steps=10,
        eta=0.0,
        guidance=0.7,
        data_std=2.0,
        weighting=weighting,
        cg_iters=10,
        cg_tol=1e-14,
    )
    for k in (0, 4, 8):
        state = _step_from(solver, prior, op, y, x, k)
        s, s_next = solver.sigmas[k], solver.sigmas[k + 1]
        r2 = s**2 * 4.0 / (s**2 + 4.0)
        a = r2 if weighting == "r2" else s**2
        J = prior.jacobian(s)
        d0 = x @ J.T + prior.b
        cov = r2 * A @ A.T + 0.09 * torch.eye(3, dtype=F64)
        u = torch.linalg.solve(cov, (y - d0 @ A.T).T).T
        expected = d0 + 0.7 * a * (u @ A) @ J  # rows: (J^T A^T u)^T = u^T A J
        torch.testing.assert_close(state.x0, expected, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(
            state.x, expected + (s_next / s) * (x - expected), rtol=1e-10, atol=1e-10
        )


@pytest.mark.parametrize("sigma_y", [0.3, 0.0])
def test_corrected_estimate_is_the_exact_gaussian_posterior_mean(sigma_y: float) -> None:
    """Prior N(m, c^2 I), data_std = c and the Tweedie weighting: with guidance 1,
    x0_y = E[x0 | x0 + s n = x, y]
    exactly (precision I / c^2 + I / s^2 + A^T A / sigma_y^2), also for noise-free y (then
    the mean is the limit: A x0_y = y)."""
    A, op, y, x, _ = _matrix_problem(sigma_y)
    mean, c = torch.tensor([[1.0, -2.0, 0.5, 0.0, 3.0]], dtype=F64), 1.7
    prior = GaussianMixture(mean, torch.ones(1, dtype=F64), std=c)
    solver = solvers.build(
        "pigdm", steps=8, data_std=c, weighting="tweedie", cg_iters=10, cg_tol=1e-14
    )
    for k in (0, 3, 6):
        state = _step_from(solver, prior, op, y, x, k)
        s = solver.sigmas[k]
        if sigma_y > 0:
            precision = (1 / c**2 + 1 / s**2) * torch.eye(5, dtype=F64) + A.T @ A / sigma_y**2
            rhs = mean / c**2 + x / s**2 + (y @ A) / sigma_y**2
            expected = torch.linalg.solve(precision, rhs.T).T
            torch.testing.assert_close(state.x0, expected, rtol=1e-9, atol=1e-9)
        else:
            torch.testing.assert_close(state.x0 @ A.T, y.expand(4, -1), rtol=1e-9, atol=1e-9)


def test_force_moves_the_step_by_the_variance_gap() -> None:
    _, op, y, _, gen = _matrix_problem(0.3)
    prior = GaussianMixture(torch.zeros(1, 5, dtype=F64), torch.ones(1, dtype=F64), std=1.0)
    solver = solvers.build("pigdm", steps=6, eta=0.0)  # no draw: both steps see the same x
    force = torch.randn(4, 5, generator=gen, dtype=F64)
    state = solver.init(prior, op, y, n=4, seed=1)
    plain, pushed = solver.step(state, 2), solver.step(state, 2, force=force)
    gap = solver.sigmas[2] ** 2 - solver.sigmas[3] ** 2
    torch.testing.assert_close(pushed.x - plain.x, gap * force, rtol=1e-10, atol=1e-10)


def test_posterior_variance_is_the_papers_at_unit_data_std() -> None:
    solver = solvers.build("pigdm")
    for sigma in (0.01, 0.5, 3.0, 80.0):
        assert math.isclose(solver.posterior_variance(sigma), sigma**2 / (1 + sigma**2))
        abar = 1 / (1 + sigma**2)  # the VP form: r_t^2 = 1 - abar_t
        assert math.isclose(solver.posterior_variance(sigma), 1 - abar)


def test_seeded_and_independent_of_the_batch() -> None:
    p = mcgdiff_problem(8, 2, 0)
    solver = solvers.build("pigdm", "gmm", steps=12)
    first = solver.sample(p.prior, p.operator, p.y, n=4, seed=7).samples
    assert torch.equal(first, solver.sample(p.prior, p.operator, p.y, n=4, seed=7).samples)
    state = solver.init(p.prior, p.operator, p.y, seed=7, indices=[2, 0])
    for k in range(solver.num_steps):
        state = solver.step(state, k)
    torch.testing.assert_close(solver.result(state), first[[2, 0]], rtol=1e-10, atol=1e-10)
    other = solver.sample(p.prior, p.operator, p.y, n=4, seed=8).samples
    assert (first - other).abs().amax(1).min() > 1e-6


def test_gmm_instance_is_closer_to_the_posterior_than_the_prior() -> None:
    """d = 8, d_y = 2, 300 samples. Measured: SW 0.51 for the gmm preset, 11.2 for prior
    samples, 0.10 for independent exact samples."""
    p = mcgdiff_problem(8, 2, 0)
    exact = p.posterior.sample(300, make_generator(1))
    result = solvers.build("pigdm", "gmm").sample(p.prior, p.operator, p.y, n=300, seed=0)
    sw = sliced_wasserstein(result.samples, exact, 100, make_generator(2))
    prior_sw = sliced_wasserstein(p.prior.sample(300, 3), exact, 100, make_generator(2))
    assert sw < 1.0 < 10.0 < prior_sw, (sw, prior_sw)


def test_nonfinite_particles_are_stopped() -> None:
    p = mcgdiff_problem(8, 2, 0)
    check_early_failures_stop_only_their_rows(lambda: solvers.build("pigdm", steps=10), p, 100)


def test_nonlinear_operators_and_bad_settings_are_refused() -> None:
    p = mcgdiff_problem(8, 2, 0)
    solver = solvers.build("pigdm", steps=5)
    hdr = operators.build("hdr", shape=(8,), sigma=0.1)
    with pytest.raises(SolverInputError, match="needs a linear operator"):
        solver.init(p.prior, hdr, torch.zeros(8, dtype=F64))
    latent = mcgdiff_problem(8, 2, 0, latent=True)
    with pytest.raises(SolverInputError, match="pixel space"):
        solver.init(latent.prior, latent.operator, latent.y)
    for bad, match in (
        ({"cg_iters": 0}, r"cg_iters = 0 is out of range"),
        ({"eta": 1.5}, r"eta = 1.5 is out of range"),
        ({"steps": 2000}, "steps = 2000 must not exceed train_steps"),
        ({"weighting": "dps"}, "weighting"),
        ({"guidance_scale": 1.0}, "no field"),
    ):
        with pytest.raises(SolverConfigError, match=match):
            solvers.build("pigdm", **bad)
