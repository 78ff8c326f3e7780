"""DPS / Latent-DPS: the documented update, per-particle independence, steppability, errors."""

from __future__ import annotations

import math

import pytest
import torch

import solvers
from experiments.metrics import sliced_wasserstein
from operators.matrix import MatrixOperator
from solvers.base import STATUS_NONFINITE, SolverInputError, particle_randn
from solvers.config import SolverConfigError
from solvers.dps import DPSConfig, LatentDPS, ddpm_sigmas
from solvers.priors.gmm import mcgdiff_problem


@pytest.fixture(scope="module")
def problem():
    return mcgdiff_problem(4, 2, seed=3)


@pytest.fixture(scope="module")
def latent_problem():
    return mcgdiff_problem(4, 2, seed=3, latent=True)


def _run(solver, p, n, seed=0, steps=None):
    state = solver.init(p.prior, p.operator, p.y, n=n, seed=seed)
    for k in range(solver.num_steps if steps is None else steps):
        state = solver.step(state, k)
    return state


def test_ddpm_grid_is_the_training_schedule():
    cfg = DPSConfig()
    sigmas = torch.tensor(ddpm_sigmas(cfg), dtype=torch.float64)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    assert sigmas.shape == (1001,) and sigmas[-1] == 0
    torch.testing.assert_close(sigmas[:-1].flip(0), ((1 - abar) / abar).sqrt())
    short = ddpm_sigmas(DPSConfig(num_steps=4))
    assert short[0] == pytest.approx(float(((1 - abar[-1]) / abar[-1]).sqrt()))
    assert short[3] == pytest.approx(float(((1 - abar[0]) / abar[0]).sqrt()))
    assert len(ddpm_sigmas(DPSConfig(num_steps=1))) == 2


def test_steppable_equals_sample_and_seeded(problem):
    solver = solvers.build("dps", num_steps=30)
    manual = solver.result(_run(solver, problem, 4, seed=7))
    result = solver.sample(problem.prior, problem.operator, problem.y, n=4, seed=7)
    torch.testing.assert_close(result.samples, manual, rtol=0, atol=0)
    assert result.nfe == 30 and result.status == ["ok"] * 4
    assert len(result.traces["loss"]) == 30 and result.traces["sigma"][-1] == 0.0
    again = solver.sample(problem.prior, problem.operator, problem.y, n=4, seed=7).samples
    other = solver.sample(problem.prior, problem.operator, problem.y, n=4, seed=8).samples
    torch.testing.assert_close(again, manual, rtol=0, atol=0)
    assert (other - manual).abs().min() > 1e-6


def test_particles_do_not_interact(problem):
    solver = solvers.build("dps", num_steps=30)
    three = solver.result(_run(solver, problem, 3))
    five = solver.result(_run(solver, problem, 5))
    torch.testing.assert_close(five[:3], three, rtol=0, atol=1e-12)
    # Perturb particle 1 half-way: particles 0 and 2 must not notice (per-sample norms).
    state = _run(solver, problem, 3, steps=15)
    state.x = state.x.clone()
    state.x[1] += 5.0
    for k in range(15, 30):
        state = solver.step(state, k)
    out = solver.result(state)
    torch.testing.assert_close(out[[0, 2]], three[[0, 2]], rtol=0, atol=1e-12)
    assert (out[1] - three[1]).abs().max() > 1e-3


def _vp_reference_step(solver, state, k, zeta, force=None):
    """DPS Algorithm 1 in DDPM variables (x_vp = x / sqrt(1 + sigma^2)), mapped back to VE."""
    prior, p_op, y = solver.prior, solver.operator, state.y
    s, sn = solver.sigmas[k], solver.sigmas[k + 1]
    abar, abar_next = 1 / (1 + s**2), 1 / (1 + sn**2)
    alpha = abar / abar_next
    beta = 1 - alpha
    x_vp = (state.x * math.sqrt(abar)).clone().requires_grad_(True)
    x0 = prior.denoise(x_vp / math.sqrt(abar), s)
    image = prior.decode(x0) if prior.is_latent else x0
    norms = (y - p_op(image)).norm(dim=1)
    (grad,) = torch.autograd.grad(norms.sum(), x_vp)
    noise = particle_randn(state.select(range(state.n)).generators, state.x)
    mean = (math.sqrt(abar_next) * beta / (1 - abar)) * x0 + (
        math.sqrt(alpha) * (1 - abar_next) / (1 - abar)
    ) * x_vp
    std = math.sqrt((1 - abar_next) / (1 - abar) * beta)
    x_vp_next = mean + std * noise - zeta * grad
    out = (x_vp_next / math.sqrt(abar_next)).detach()
    if force is not None:
        out = out + (s**2 - sn**2) * force
    return out


def test_step_is_the_ddpm_dps_step_and_force_scaling(problem):
    solver = solvers.build("dps", num_steps=50, zeta=0.7)
    state = _run(solver, problem, 3, steps=20)
    k = 20
    expected = _vp_reference_step(solver, state, k, zeta=0.7)
    force = torch.randn(state.x.shape, generator=torch.Generator().manual_seed(1)).double()
    expected_forced = expected + (solver.sigmas[k] ** 2 - solver.sigmas[k + 1] ** 2) * force
    before = state.x
    forced = solver.step(state.select(range(3)), k, force=force)
    plain = solver.step(state, k)
    torch.testing.assert_close(plain.x, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(forced.x, expected_forced, rtol=1e-9, atol=1e-9)
    # The estimate x0 is the denoiser's output at the pre-step state.
    torch.testing.assert_close(
        plain.x0, problem.prior.denoise(before, solver.sigmas[k]), rtol=0, atol=0
    )


def test_last_step_returns_the_corrected_sample(problem):
    solver = solvers.build("dps", num_steps=10, zeta=0.5)
    state = _run(solver, problem, 2, steps=9)
    expected = _vp_reference_step(solver, state, 9, zeta=0.5)
    state = solver.step(state, 9)
    torch.testing.assert_close(state.x, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(solver.result(state), state.x, rtol=0, atol=0)


def test_latent_dps_alpha_bar_ddim_step(latent_problem):
    p = latent_problem
    solver = solvers.build("latent_dps", num_steps=20, zeta=0.5)
    assert solver.config.step_rule == "alpha_bar" and solver.config.eta == 0.0
    state = _run(solver, p, 3, steps=5)
    k = 5
    s, sn = solver.sigmas[k], solver.sigmas[k + 1]
    z = state.x.clone().requires_grad_(True)
    z0 = p.prior.denoise(z, s)
    norms = (p.y - p.operator(p.prior.decode(z0))).norm(dim=1)
    (grad,) = torch.autograd.grad(norms.sum(), z)
    # DDIM (eta = 0) in VE form and zeta_k = 0.5 abar_k on the VP-scaled gradient.
    abar = 1 / (1 + s**2)
    expected = z0 + sn * (z - z0) / s - 0.5 * abar * math.sqrt((1 + s**2) * (1 + sn**2)) * grad
    state = solver.step(state, k)
    torch.testing.assert_close(state.x, expected.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(state.x0, p.prior.decode(z0).detach(), rtol=1e-9, atol=1e-9)
    out = solver.sample(p.prior, p.operator, p.y, n=2, seed=0)
    assert out.samples.shape == (2, 4) and out.nfe == 20


def test_nonfinite_particle_stops_alone(problem):
    solver = solvers.build("dps", num_steps=20)
    clean = solver.result(_run(solver, problem, 3))
    state = _run(solver, problem, 3, steps=5)
    state.x = state.x.clone()
    state.x[1] = float("nan")
    for k in range(5, 20):
        state = solver.step(state, k)
    assert state.status.tolist() == [0, STATUS_NONFINITE, 0]
    torch.testing.assert_close(state.x0[[0, 2]], clean[[0, 2]], rtol=0, atol=1e-12)
    loss = solver.measurement_loss(state)
    assert torch.isinf(loss[1]) and torch.isfinite(loss[[0, 2]]).all()


def test_gmm_preset_against_the_exact_posterior():
    # DPS is not asymptotically exact. Measured with this preset on MCGdiff instance (8, 4, 0):
    # SW 0.42 / 0.40 / 0.40 for particle seeds 0 / 1 / 2 at n = 100 (0.39 at n = 1000; floor
    # of two exact 2k sample sets 0.033); prior samples score about 14.
    p = mcgdiff_problem(8, 4, seed=0)
    result = solvers.build("dps", preset="gmm").sample(p.prior, p.operator, p.y, n=100, seed=0)
    reference = p.posterior.sample(2000, 1)
    sw = sliced_wasserstein(result.samples, reference)
    assert sw < 0.6, sw
    assert sliced_wasserstein(p.prior.sample(100, 2), reference) > 20 * sw


def test_latent_gmm_preset_against_the_exact_posterior():
    # Linear-decoder variant of MCGdiff instance (8, 4, 0), posterior pushed through the decoder.
    # Measured: SW 0.62 / 0.59 / 0.65 for particle seeds 0 / 1 / 2 at n = 100 (floor of 300 exact
    # samples 0.084); prior samples score 16.7.
    p = mcgdiff_problem(8, 4, seed=0, latent=True)
    reference = p.posterior.pushforward(p.prior.decoder, p.prior.bias).sample(2000, 1)
    solver = solvers.build("latent_dps", preset="gmm")
    sw = sliced_wasserstein(
        solver.sample(p.prior, p.operator, p.y, n=100, seed=0).samples, reference
    )
    assert sw < 0.9, sw
    assert sliced_wasserstein(p.prior.decode(p.prior.sample(100, 2)), reference) > 15 * sw


def test_bad_input_raises(problem, latent_problem):
    dps = solvers.build("dps", num_steps=5)
    with pytest.raises(SolverInputError, match="shape"):
        dps.init(problem.prior, problem.operator, torch.zeros(1, 3, dtype=torch.float64))
    with pytest.raises(SolverInputError, match="latent"):
        dps.init(latent_problem.prior, latent_problem.operator, latent_problem.y)
    with pytest.raises(SolverInputError, match="latent prior"):
        solvers.build("latent_dps").init(problem.prior, problem.operator, problem.y)
    wrong = MatrixOperator(torch.ones(2, 6, dtype=torch.float64), sigma=0.1)
    with pytest.raises(SolverInputError, match="acts on"):
        dps.init(problem.prior, wrong, problem.y)
    for bad in ({"zeta": -1.0}, {"num_steps": 0}, {"eta": 2.0}, {"step_rule": "x"}):
        with pytest.raises(SolverConfigError):
            solvers.build("dps", **bad)
    with pytest.raises(SolverConfigError, match="beta_start"):
        DPSConfig(beta_start=0.03)
    with pytest.raises(SolverConfigError, match="train_steps"):
        DPSConfig(num_steps=2000)
    assert isinstance(solvers.build("latent_dps"), LatentDPS)


def test_presets_build():
    for name in ("dps", "latent_dps"):
        for preset in solvers.presets(name):
            solvers.build(name, preset=preset)
    assert solvers.build("dps", preset="pixel/super_resolution").config.zeta == 0.3
