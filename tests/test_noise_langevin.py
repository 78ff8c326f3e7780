"""Noise-space Langevin: Adam warm start, EM / exponential steps, chains, independence, errors."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import solvers
from experiments.metrics import sliced_wasserstein
from operators.matrix import MatrixOperator
from solvers.base import STATUS_NONFINITE, SolverInputError, particle_randn
from solvers.config import SolverConfigError
from solvers.priors import ode
from solvers.priors.base import Prior
from solvers.priors.gmm import GaussianMixture, mcgdiff_problem
from solvers.schedules import karras_sigmas

F64 = torch.float64
SMALL = {"warm_steps": 4, "langevin_steps": 6, "step_size": 1e-3, "generator_steps": 3}


@pytest.fixture(scope="module")
def problem():
    return mcgdiff_problem(4, 2, seed=3)


def _build(**overrides):
    return solvers.build("noise_langevin", **{**SMALL, **overrides})


def _run(solver, p, n, seed=0, steps=None):
    state = solver.init(p.prior, p.operator, p.y, n=n, seed=seed)
    for k in range(solver.num_steps if steps is None else steps):
        state = solver.step(state, k)
    return state


def _loss_and_grad(solver, p, z):
    """R(z) = ||y - A(G(z))||^2 and its gradient, with G written out from the config."""
    cfg = solver.config
    sigmas = karras_sigmas(cfg.generator_steps, cfg.generator_sigma_min, cfg.generator_sigma_max)
    z = z.clone().requires_grad_(True)
    x = ode.solve(p.prior.denoise, cfg.generator_sigma_max * z, sigmas, cfg.generator_method)
    loss = (p.y - p.operator(x)).pow(2).sum(1)
    (grad,) = torch.autograd.grad(loss.sum(), z)
    return x.detach(), loss.detach(), grad


def test_steppable_equals_sample_seeded_and_counted(problem):
    solver = _build()
    manual = solver.result(_run(solver, problem, 3, seed=5))
    result = solver.sample(problem.prior, problem.operator, problem.y, n=3, seed=5)
    torch.testing.assert_close(result.samples, manual, rtol=0, atol=0)
    # One generator call (5 Heun evaluations for 3 steps) at init and one per step.
    assert result.nfe == (1 + solver.num_steps) * ode.num_evaluations(3, "heun")
    again = solver.sample(problem.prior, problem.operator, problem.y, n=3, seed=5).samples
    torch.testing.assert_close(again, manual, rtol=0, atol=0)
    other = solver.sample(problem.prior, problem.operator, problem.y, n=3, seed=6).samples
    assert (other - manual).abs().min() > 1e-6


@pytest.mark.parametrize("perturb_at", [2, 6])  # during the warm start, during Langevin
def test_particles_do_not_interact(problem, perturb_at):
    solver = _build()
    three = _run(solver, problem, 3)
    five = _run(solver, problem, 5)
    # Equal up to floating-point rounding that depends on the batch size (BLAS blocking).
    torch.testing.assert_close(five.x0[:3], three.x0, rtol=1e-9, atol=1e-9)
    state = _run(solver, problem, 3, steps=perturb_at)
    state.x = state.x.clone()
    state.x[1] += 0.5
    for k in range(perturb_at, solver.num_steps):
        state = solver.step(state, k)
    torch.testing.assert_close(state.x[[0, 2]], three.x[[0, 2]], rtol=0, atol=1e-12)
    torch.testing.assert_close(
        solver.chain_samples(state)[[0, 2]], solver.chain_samples(three)[[0, 2]], rtol=0, atol=1e-12
    )
    assert (state.x[1] - three.x[1]).abs().max() > 1e-3


def test_adam_warm_start_matches_torch_adam(problem):
    solver = _build(warm_lr=0.05)
    state = solver.init(problem.prior, problem.operator, problem.y, n=3, seed=1)
    _, _, grad = _loss_and_grad(solver, problem, state.x)
    torch.testing.assert_close(state.extra["grad"], grad, rtol=1e-10, atol=1e-10)
    force = torch.randn(state.x.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    z = state.x.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=0.05)
    sc2 = problem.operator.sigma**2
    for k in range(2):
        _, _, g = _loss_and_grad(solver, problem, z.detach())
        z.grad = g - 2 * sc2 * force  # Adam on R - 2 sigma_c^2 <force, z>
        optimiser.step()
        state = solver.step(state, k, force=force)
    torch.testing.assert_close(state.x, z.detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("integrator", ["euler_maruyama", "exponential"])
def test_langevin_step_by_hand(problem, integrator):
    solver = _build(warm_steps=1, step_size=0.01, sigma_c=0.3, integrator=integrator)
    state = _run(solver, problem, 3, steps=1)
    z = state.x.clone()
    force = torch.randn(z.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    xi = particle_randn(state.select(range(3)).generators, z)
    _, _, grad = _loss_and_grad(solver, problem, z)
    drift = force - grad / (2 * 0.3**2)
    h = 0.01
    if integrator == "euler_maruyama":
        expected = z + h * (drift - z) + math.sqrt(2 * h) * xi
    else:
        expected = (
            math.exp(-h) * z + (1 - math.exp(-h)) * drift + math.sqrt(1 - math.exp(-2 * h)) * xi
        )
    state = solver.step(state, 1, force=force)
    torch.testing.assert_close(state.x, expected, rtol=1e-10, atol=1e-10)
    image, _, grad_next = _loss_and_grad(solver, problem, expected)
    torch.testing.assert_close(state.x0, image, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state.extra["grad"], grad_next, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("integrator", ["euler_maruyama", "exponential"])
def test_stationary_law_of_a_gaussian_chain(integrator):
    """Gaussian prior and linear measurement: the generic ODE generator is affine, G(z) = a z + b,
    so the chain is linear-Gaussian and its stationary law is known exactly for each integrator:
    mean P^-1 c (the posterior mean), per eigenvalue l of P the variance 1 / (l (1 - h l / 2))
    (Euler-Maruyama) or (1 - e^-2h) / (1 - (1 - (1 - e^-h) l)^2) (exponential)."""
    prior = GaussianMixture(torch.tensor([[1.0, -2.0, 0.5]], dtype=F64), torch.ones(1, dtype=F64))
    A = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.8, 0.0]], dtype=F64)
    operator = MatrixOperator(A, sigma=0.4)
    y = torch.tensor([[0.3, -1.0]], dtype=F64)
    h, n = 0.1, 2000
    solver = solvers.build(
        "noise_langevin",
        warm_steps=0,
        langevin_steps=80,
        step_size=h,
        integrator=integrator,
        generator_steps=2,  # Euler from sigma 1 to 0.002, then 0: G(z) = mu + 0.5 z
        generator_method="euler",
        generator_sigma_max=1.0,
        keep=1,
    )
    state = _run(solver, SimpleNamespace(prior=prior, operator=operator, y=y), n)
    eye = torch.eye(3, dtype=F64)
    b = solver.generate(torch.zeros(1, 3, dtype=F64))[0]
    jac = solver.generate(eye) - b  # row i = G(e_i) - G(0) = a e_i
    M = A @ jac.T
    P = eye + M.T @ M / 0.4**2
    mean = torch.linalg.solve(P, M.T @ (y[0] - A @ b) / 0.4**2)
    lam, U = torch.linalg.eigh(P)
    if integrator == "euler_maruyama":
        var = 1 / (lam * (1 - h * lam / 2))
    else:
        var = -math.expm1(-2 * h) / (1 - (1 + math.expm1(-h) * lam) ** 2)
    z = state.x @ U  # coordinates in P's eigenbasis: independent with variances var
    se = (var / n).sqrt()
    assert ((z.mean(0) - mean @ U).abs() < 4 * se).all()
    assert ((z.var(0) / var - 1).abs() < 4 * math.sqrt(2 / n)).all()
    # Distinguishable from the continuous-time posterior variance 1 / l (the discrete chains
    # are 5-17 % (Euler-Maruyama) and up to 11 % (exponential) wider here).
    assert ((z.var(0) * lam - 1).abs() > 2 * math.sqrt(2 / n)).any()
    torch.testing.assert_close(solver.chain_samples(state)[:, -1], state.x0, rtol=0, atol=0)


def test_warm_start_reduces_the_loss(problem):
    solver = _build(warm_steps=60, langevin_steps=1, warm_lr=0.05)
    state = solver.init(problem.prior, problem.operator, problem.y, n=16, seed=0)
    before = solver.measurement_loss(state)
    for k in range(60):
        state = solver.step(state, k)
    after = solver.measurement_loss(state)
    assert after.median() < 0.1 * before.median()


def test_chain_thinning_and_keep(problem):
    solver = _build(langevin_steps=6, thin=2)
    state = solver.init(problem.prior, problem.operator, problem.y, n=2, seed=0)
    recorded = []
    for k in range(solver.num_steps):
        state = solver.step(state, k)
        recorded.append(state.x0.clone())
    chain = solver.chain_samples(state)
    assert chain.shape == (2, 3, 4)
    # Langevin iterates 2, 4, 6 are steps warm_steps + 1, + 3, + 5.
    expected = torch.stack([recorded[5], recorded[7], recorded[9]], dim=1)
    torch.testing.assert_close(chain, expected, rtol=0, atol=0)
    kept = _run(_build(langevin_steps=6, keep=2), problem, 2)
    torch.testing.assert_close(
        kept.extra["chain"], _run(_build(langevin_steps=6), problem, 2).extra["chain"][:, -2:]
    )
    torch.testing.assert_close(solver.result(state), recorded[-1], rtol=0, atol=0)


class _LinearGenerator(Prior):
    """A prior with its own deterministic generator G(z) = 2 z + 1 (counts one NFE per call)."""

    def __init__(self) -> None:
        super().__init__((4,), 0.01, 10.0)

    def generator(self, z: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return 2 * z + 1


def test_prior_generator_and_latent_decoder(problem):
    prior = _LinearGenerator()
    solver = _build()
    operator = MatrixOperator(problem.operator.A.float(), sigma=0.1)
    result = solver.sample(prior, operator, problem.y.float(), n=2, seed=0)
    assert result.nfe == 1 + solver.num_steps
    state = _run(solver, SimpleNamespace(prior=prior, operator=operator, y=problem.y.float()), 2)
    torch.testing.assert_close(state.x0, 2 * state.x + 1)
    latent = mcgdiff_problem(4, 2, seed=3, latent=True)
    state = _run(solver, latent, 2)
    expected = latent.prior.decode(solver.generate(state.x))
    torch.testing.assert_close(state.x0, expected, rtol=1e-12, atol=1e-12)


def test_nonfinite_particle_stops_alone(problem):
    solver = _build()
    clean = _run(solver, problem, 3)
    state = _run(solver, problem, 3, steps=5)
    state.x = state.x.clone()
    state.x[1] = float("nan")
    for k in range(5, solver.num_steps):
        state = solver.step(state, k)
    assert state.status.tolist() == [0, STATUS_NONFINITE, 0]
    torch.testing.assert_close(state.x0[[0, 2]], clean.x0[[0, 2]], rtol=0, atol=1e-12)


def test_gmm_preset_against_the_exact_posterior():
    # Far from exact on the well-separated mixture: Langevin steps rarely cross between the
    # generator's mode basins. Measured with this preset on MCGdiff instance (8, 4, 0): SW 1.14 /
    # 0.98 / 2.07 for particle seeds 0 / 1 / 2 at n = 64 (floor of two exact 2k sample sets
    # 0.033); prior samples score about 14.
    p = mcgdiff_problem(8, 4, seed=0)
    solver = solvers.build("noise_langevin", preset="gmm")
    result = solver.sample(p.prior, p.operator, p.y, n=64, seed=0)
    reference = p.posterior.sample(2000, 1)
    sw = sliced_wasserstein(result.samples, reference)
    assert sw < 1.7, sw
    assert sliced_wasserstein(p.prior.sample(64, 2), reference) > 8 * sw


def test_gmm_preset_is_stable_on_a_sharp_likelihood():
    # sigma_y 0.004 as on the benchmark instances where step 1e-4 diverged: every particle of
    # the preset finishes, and the old step size still stops them all (the check can fail).
    p = mcgdiff_problem(8, 1, seed=0)
    sharp = MatrixOperator(p.operator.A, sigma=0.004)
    result = solvers.build("noise_langevin", preset="gmm").sample(p.prior, sharp, p.y, n=16, seed=0)
    assert result.status == ["ok"] * 16
    old = solvers.build("noise_langevin", preset="gmm", step_size=1e-4)
    assert "ok" not in old.sample(p.prior, sharp, p.y, n=16, seed=0).status


def test_bad_input_raises(problem):
    solver = _build()
    with pytest.raises(SolverInputError, match="shape"):
        solver.init(problem.prior, problem.operator, torch.zeros(1, 3, dtype=F64))
    noiseless = MatrixOperator(problem.operator.A, sigma=0.0)
    with pytest.raises(SolverInputError, match="sigma_c"):
        solver.init(problem.prior, noiseless, problem.y)
    _build(sigma_c=0.2).init(problem.prior, noiseless, problem.y)
    wrong = MatrixOperator(torch.ones(2, 6, dtype=F64), sigma=0.1)
    with pytest.raises(SolverInputError, match="acts on"):
        solver.init(problem.prior, wrong, problem.y)
    with pytest.raises(SolverInputError, match="generator_sigma_min"):
        _build(generator_sigma_min=5.0, generator_sigma_max=1.0).init(
            problem.prior, problem.operator, problem.y
        )
    for bad in ({"step_size": 0.0}, {"warm_steps": -1}, {"integrator": "rk4"}, {"thin": 0}):
        with pytest.raises(SolverConfigError):
            solvers.build("noise_langevin", **bad)


def test_presets_build():
    for preset in solvers.presets("noise_langevin"):
        solvers.build("noise_langevin", preset=preset)
    cfg = solvers.build("noise_langevin", preset="cm/super_resolution_x4").config
    assert (cfg.warm_steps, cfg.langevin_steps, cfg.step_size) == (500, 50, 1.5e-4)
