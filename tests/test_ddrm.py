"""DDRM: the spectral update against a direct computation from torch.linalg.svd, refusals and
batches of several problems (solvers/ddrm.py)."""

from __future__ import annotations

import math

import pytest
import torch

import operators
import solvers
from operators.matrix import MatrixOperator
from solvers import SolverInputError
from solvers.base import particle_randn
from solvers.priors.gmm import GaussianMixture
from tests.operator_cases import build_small
from tests.problem_batches import IMAGE, ImageMixture

F64 = torch.float64
MU = torch.tensor([[1.0, -0.5, 0.25]], dtype=F64)
C = 1.5
A = torch.tensor([[1.0, 0.5, -0.2], [0.3, -1.0, 0.4]], dtype=F64)
Y = torch.tensor([[3.0, -1.0]], dtype=F64)


def _prior() -> GaussianMixture:
    return GaussianMixture(MU, torch.ones(1, dtype=F64), std=C)


def _direct_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    op: MatrixOperator,
    s: float,
    s_next: float,
    eta: float,
    eta_b: float,
) -> torch.Tensor:
    """The paper's eq. 7-8 coordinate by coordinate, from a dense SVD; ``eps`` is the spectral
    noise (the particle's draw is taken in the V basis)."""
    u, sv, vh = torch.linalg.svd(op.A.to(F64), full_matrices=True)
    v = vh.T
    x0 = MU + C**2 / (C**2 + s**2) * (x - MU)
    xbar, xbar0, e = x @ v, x0 @ v, eps
    out = torch.empty_like(xbar)
    for i in range(3):
        if i >= len(sv):
            out[:, i] = (
                xbar0[:, i]
                + math.sqrt(1 - eta**2) * s_next * (xbar[:, i] - xbar0[:, i]) / s
                + eta * s_next * e[:, i]
            )
            continue
        ybar = float((u.T @ Y[0])[i] / sv[i])
        tau = op.sigma / float(sv[i])
        if s_next < tau:
            out[:, i] = (
                xbar0[:, i]
                + math.sqrt(1 - eta**2) * s_next * (ybar - xbar0[:, i]) / tau
                + eta * s_next * e[:, i]
            )
        else:
            out[:, i] = (
                (1 - eta_b) * xbar0[:, i]
                + eta_b * ybar
                + math.sqrt(s_next**2 - eta_b**2 * tau**2) * e[:, i]
            )
    return out @ v.T


@pytest.mark.parametrize("eta_b", [1.0, 0.6])
def test_the_spectral_step_is_the_papers_update_in_both_regimes(eta_b: float) -> None:
    op = MatrixOperator(A, sigma=0.4)
    solver = solvers.build("ddrm", steps=20, eta=0.7, eta_b=eta_b)
    state = solver.init(_prior(), op, Y, n=4, seed=3)
    taus = (0.4 / torch.linalg.svdvals(A)).tolist()
    # the first step whose next level lies between the two tau_i: both regimes in one step
    k = next(j for j in range(20) if min(taus) <= solver.sigmas[j + 1] < max(taus))
    for j in range(k):
        state = solver.step(state, j)
    saved = [g.get_state() for g in state.generators]
    x = state.x.clone()
    state = solver.step(state, k)
    gens = [torch.Generator().set_state(s) for s in saved]
    eps = particle_randn(gens, x)
    s, s_next = solver.sigmas[k], solver.sigmas[k + 1]
    want = _direct_step(x, eps, op, s, s_next, 0.7, eta_b)
    torch.testing.assert_close(state.x, want, rtol=1e-10, atol=1e-10)


def test_noise_free_samples_fit_the_measurement_exactly() -> None:
    """sigma_y = 0, eta_b = 1: the last step puts ybar on every observed coordinate."""
    op = MatrixOperator(A, sigma=0.0)
    result = solvers.build("ddrm", steps=10).sample(_prior(), op, Y, n=5, seed=1)
    torch.testing.assert_close(op(result.samples), Y.expand(5, 2), rtol=1e-10, atol=1e-10)


def test_operators_without_an_svd_are_refused_with_the_supported_ones() -> None:
    prior = ImageMixture()
    solver = solvers.build("ddrm", steps=5)
    blur = build_small("motion_blur", shape=IMAGE, kernel_size=3)
    with pytest.raises(SolverInputError, match=r"cheap SVD .*super_resolution.*not separable"):
        solver.init(prior, blur, torch.zeros(1, *IMAGE, dtype=F64))
    phase = build_small("phase_retrieval", shape=IMAGE)
    with pytest.raises(SolverInputError, match="needs a linear operator"):
        solver.init(prior, phase, torch.zeros(1, *phase.output_shape, dtype=F64))


@pytest.mark.parametrize("name", ["ddrm", "ddnm", "ddnm_plus"])
def test_a_batch_of_problems_equals_separate_runs(name: str) -> None:
    other = torch.tensor([[0.2, -1.0, 0.7], [1.1, 0.1, 0.3]], dtype=F64)
    ops = [MatrixOperator(A, sigma=0.1), MatrixOperator(other, sigma=0.1)]
    ys, seeds, m = [Y, torch.tensor([[-1.0, 0.5]], dtype=F64)], [5, 9], 3
    solver = solvers.build(name, steps=15)
    separate = [
        solver.sample(_prior(), op, y, n=m, seed=s) for op, y, s in zip(ops, ys, seeds, strict=True)
    ]
    stacked = operators.stack_rows(ops, m)
    y = torch.cat([y.expand(m, 2) for y in ys])
    state = solver.init(
        _prior(), stacked, y, seed=[s for s in seeds for _ in range(m)], indices=list(range(m)) * 2
    )
    for k in range(solver.num_steps):
        state = solver.step(state, k)
    want = torch.cat([r.samples for r in separate])
    torch.testing.assert_close(solver.result(state), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("inpaint_random", {"drop": 0.5}),
        ("inpaint_box", {"box": 2, "margin": 1}),
        ("super_resolution", {"factor": 2}),
        ("gaussian_blur", {"kernel_size": 3, "std": 1.0}),
    ],
)
@pytest.mark.parametrize("solver", ["ddrm", "ddnm", "ddnm_plus"])
def test_image_operators_run_at_one_call_per_step(solver: str, name: str, params) -> None:
    prior = ImageMixture()
    op = build_small(name, shape=IMAGE, sigma=0.05, **params)
    x = prior.sample(1, torch.Generator().manual_seed(0))
    y = op.measure(x, torch.Generator().manual_seed(1))
    result = solvers.build(solver, steps=12).sample(prior, op, y, n=3, seed=2)
    assert result.status == ["ok"] * 3 and result.nfe == 12
    residual = (op(result.samples) - y).pow(2).mean().sqrt()
    assert residual < 0.2, residual
