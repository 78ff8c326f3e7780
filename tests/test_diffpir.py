"""DiffPIR (Zhu et al., CVPRW 2023): the data step vs the closed-form quadratic minimiser,
re-noising, grid, refusals, determinism, GMM instance."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import operators
import solvers
from experiments.metrics import sliced_wasserstein
from operators.random import make_generator
from solvers.base import SolverInputError
from solvers.config import SolverConfigError
from solvers.diffpir import DiffPIR, diffpir_timesteps
from solvers.priors.gmm import GaussianMixture, mcgdiff_problem
from tests.faulty import check_early_failures_stop_only_their_rows

F64 = torch.float64
MEAN = torch.tensor([[1.0, -2.0, 0.5, 0.0, 3.0]], dtype=F64)
STD = 1.7


def _gaussian_problem(sigma_y: float):
    """d = 5, d_y = 3, prior N(MEAN, STD^2 I): the denoiser is MEAN + STD^2 (x - MEAN) / v."""
    gen = make_generator(5)
    prior = GaussianMixture(MEAN, torch.ones(1, dtype=F64), std=STD)
    A = torch.randn(3, 5, generator=gen, dtype=F64)
    op = operators.build("matrix", A=A, sigma=sigma_y)
    y = torch.randn(1, 3, generator=gen, dtype=F64)
    x = 3.0 * torch.randn(4, 5, generator=gen, dtype=F64)
    return prior, A, op, y, x


def _step_from(solver: DiffPIR, prior, op, y, x: torch.Tensor, k: int, force=None):
    state = solver.init(prior, op, y, n=x.shape[0], seed=0)
    return solver.step(dataclasses.replace(state, x=x.clone()), k, force=force)


def test_data_step_is_the_minimiser_of_the_quadratic_and_renoising_is_ddim() -> None:
    """x0_hat = (A^T A + rho I)^-1 (A^T y + rho x0), rho = lambda sigma_y^2 / s^2, and with
    zeta = 0 the next state is x0_hat + s' (x - x0_hat) / s, plus (s^2 - s'^2) force."""
    prior, A, op, y, x = _gaussian_problem(0.2)
    solver = solvers.build("diffpir", steps=10, lambda_=0.7, zeta=0.0, cg_iters=10, cg_tol=1e-14)
    force = torch.randn(4, 5, generator=make_generator(8), dtype=F64)
    for k in (0, 4, 8, 9):
        state = _step_from(solver, prior, op, y, x, k, force)
        s, s_next = solver.sigmas[k], solver.sigmas[k + 1]
        x0 = MEAN + STD**2 / (STD**2 + s**2) * (x - MEAN)
        rho = 0.7 * 0.04 / s**2
        normal = A.T @ A + rho * torch.eye(5, dtype=F64)
        expected = torch.linalg.solve(normal, (y @ A + rho * x0).T).T
        torch.testing.assert_close(state.x0, expected, rtol=1e-9, atol=1e-9)
        step = expected + s_next / s * (x - expected) + (s**2 - s_next**2) * force
        torch.testing.assert_close(state.x, step, rtol=1e-9, atol=1e-9)
    assert solver.sigmas[-1] == 0.0  # after the last step the sample is x0_hat


def test_noise_free_data_step_is_the_projection_onto_the_measurements() -> None:
    prior, A, op, y, x = _gaussian_problem(0.0)
    solver = solvers.build("diffpir", steps=6, cg_iters=20, cg_tol=1e-14)
    state = _step_from(solver, prior, op, y, x, 2)
    s = solver.sigmas[2]
    x0 = MEAN + STD**2 / (STD**2 + s**2) * (x - MEAN)
    projection = x0 + torch.linalg.lstsq(A, (y - x0 @ A.T).T).solution.T
    torch.testing.assert_close(state.x0, projection, rtol=1e-9, atol=1e-9)


def test_zeta_mixes_the_predicted_and_fresh_noise() -> None:
    """With zeta, x' - x0_hat = s' (sqrt(1 - zeta) eps_hat + sqrt(zeta) xi): removing the
    predicted part leaves s' sqrt(zeta) xi with xi standard normal."""
    prior, _, op, y, _ = _gaussian_problem(0.2)
    solver = solvers.build("diffpir", steps=10, zeta=0.6)
    x = 3.0 * torch.randn(4000, 5, generator=make_generator(3), dtype=F64)
    state = _step_from(solver, prior, op, y, x, 3)
    s, s_next = solver.sigmas[3], solver.sigmas[4]
    eps_hat = (x - state.x0) / s
    xi = (state.x - state.x0 - s_next * 0.4**0.5 * eps_hat) / (s_next * 0.6**0.5)
    assert abs(float(xi.mean())) < 0.03 and abs(float(xi.std()) - 1.0) < 0.03


def test_quad_grid_is_dense_at_the_clean_end() -> None:
    times = diffpir_timesteps(1000, 100, "quad")
    assert times[0] == 999 and times[-1] == 0 and times.numel() == 100
    assert bool((times[1:] < times[:-1]).all())
    assert times[1] == 999 - 100  # floor(1000 sqrt(1 / 99)) = 100
    uniform = diffpir_timesteps(1000, 100, "uniform")
    assert uniform[0] == 999 and uniform[-1] == 0
    assert diffpir_timesteps(1000, 1, "quad").tolist() == [999]


def test_presets_convert_the_reference_codes_lambda() -> None:
    """The reference code's rho uses sigma_y in [0, 1] units on [-1, 1] images: lambda / 4."""
    assert solvers.presets("diffpir")["pixel/gaussian_blur"].overrides["lambda_"] == 7.0 / 4
    assert solvers.presets("diffpir")["pixel/inpaint_random"].overrides["lambda_"] == 1.0 / 4


def test_seeded_and_independent_of_the_batch() -> None:
    p = mcgdiff_problem(8, 2, 0)
    solver = solvers.build("diffpir", "gmm", steps=12)
    first = solver.sample(p.prior, p.operator, p.y, n=4, seed=7).samples
    assert torch.equal(first, solver.sample(p.prior, p.operator, p.y, n=4, seed=7).samples)
    state = solver.init(p.prior, p.operator, p.y, seed=7, indices=[2, 0])
    for k in range(solver.num_steps):
        state = solver.step(state, k)
    torch.testing.assert_close(solver.result(state), first[[2, 0]], rtol=1e-10, atol=1e-10)
    other = solver.sample(p.prior, p.operator, p.y, n=4, seed=8).samples
    assert (first - other).abs().amax(1).min() > 1e-6


def test_gmm_instance_is_closer_to_the_posterior_than_the_prior() -> None:
    """d = 8, d_y = 2, 300 samples. Measured: SW 2.45 for the gmm preset, 11.2 for prior
    samples, 0.10 for independent exact samples."""
    p = mcgdiff_problem(8, 2, 0)
    exact = p.posterior.sample(300, make_generator(1))
    result = solvers.build("diffpir", "gmm").sample(p.prior, p.operator, p.y, n=300, seed=0)
    sw = sliced_wasserstein(result.samples, exact, 100, make_generator(2))
    prior_sw = sliced_wasserstein(p.prior.sample(300, 3), exact, 100, make_generator(2))
    assert sw < 3.5 < 10.0 < prior_sw, (sw, prior_sw)


def test_nonfinite_particles_are_stopped() -> None:
    p = mcgdiff_problem(8, 2, 0)
    check_early_failures_stop_only_their_rows(lambda: solvers.build("diffpir", steps=10), p, 100)


def test_nonlinear_operators_and_bad_settings_are_refused() -> None:
    p = mcgdiff_problem(8, 2, 0)
    solver = solvers.build("diffpir", steps=5)
    hdr = operators.build("hdr", shape=(8,), sigma=0.1)
    with pytest.raises(SolverInputError, match="needs a linear operator"):
        solver.init(p.prior, hdr, torch.zeros(8, dtype=F64))
    latent = mcgdiff_problem(8, 2, 0, latent=True)
    with pytest.raises(SolverInputError, match="pixel space"):
        solver.init(latent.prior, latent.operator, latent.y)
    for bad, match in (
        ({"zeta": 1.5}, r"zeta = 1.5 is out of range"),
        ({"lambda_": 0.0}, r"lambda_ = 0.0 is out of range"),
        ({"skip_type": "log"}, "skip_type"),
        ({"lam": 1.0}, "no field"),
    ):
        with pytest.raises(SolverConfigError, match=match):
            solvers.build("diffpir", **bad)
