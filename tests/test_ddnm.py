"""DDNM / DDNM+: exact data consistency of x0|t, DDNM+'s lambda and noise budget, refusals
(solvers/ddnm.py)."""

from __future__ import annotations

import math

import pytest
import torch

import solvers
from operators.matrix import MatrixOperator
from solvers import SolverInputError
from tests.operator_cases import build_small
from tests.problem_batches import IMAGE, ImageMixture

F64 = torch.float64


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("inpaint_box", {"box": 2, "margin": 1}),
        ("inpaint_random", {"drop": 0.5}),
        ("super_resolution", {"factor": 2}),
    ],
)
def test_x0_given_t_fits_a_noise_free_image_measurement_exactly(name: str, params) -> None:
    prior = ImageMixture()
    op = build_small(name, shape=IMAGE, sigma=0.0, **params)
    gen = torch.Generator().manual_seed(0)
    y = op(prior.sample(1, gen))
    solver = solvers.build("ddnm", steps=10)
    solver.init(prior, op, y)
    x0_hat = torch.randn(4, *IMAGE, generator=gen, dtype=F64)
    x0t = solver.data_consistent(x0_hat, y, op, 3)
    torch.testing.assert_close(op(x0t), y.expand_as(op(x0t)), rtol=1e-10, atol=1e-10)
    # the null-space part is x0_hat's: x0|t - x0_hat lies in the row space (A^+ A fixes it)
    moved = x0t - x0_hat
    torch.testing.assert_close(op.pseudo_inverse(op(moved)), moved, rtol=1e-6, atol=1e-6)


def test_x0_given_t_on_a_matrix_is_the_dense_pseudoinverse_formula() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(5, 12, generator=gen, dtype=F64)
    op = MatrixOperator(a, sigma=0.0)
    y = torch.randn(1, 5, generator=gen, dtype=F64)
    solver = solvers.build("ddnm", steps=10)
    prior = ImageMixture(shape=(12,))
    solver.init(prior, op, y)
    x0_hat = torch.randn(3, 12, generator=gen, dtype=F64)
    pinv = torch.linalg.pinv(a)
    want = y @ pinv.T + x0_hat @ (torch.eye(12, dtype=F64) - pinv @ a).T
    got = solver.data_consistent(x0_hat, y, op, 2)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got @ a.T, y.expand(3, 5), rtol=1e-10, atol=1e-10)


def test_noise_free_samples_fit_the_measurement() -> None:
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(5, 12, generator=gen, dtype=F64)
    op = MatrixOperator(a, sigma=0.0)
    prior = ImageMixture(shape=(12,))
    y = op(prior.sample(1, gen))
    for name in ("ddnm", "ddnm_plus"):
        result = solvers.build(name, steps=10).sample(prior, op, y, n=4, seed=0)
        torch.testing.assert_close(op(result.samples), y.expand(4, 5), rtol=1e-9, atol=1e-9)


def test_ddnm_plus_scales_the_correction_to_the_steps_noise_budget() -> None:
    """lambda = min(1, c / (a tau)) with c, a of the DDPM posterior (eta = 1); the noise of y
    carried into x_(k+1), a lambda tau, then never exceeds the step's std c."""
    op = MatrixOperator(torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.1, 0.0]], dtype=F64), sigma=0.2)
    solver = solvers.build("ddnm_plus", steps=20, eta=1.0)
    solver.init(ImageMixture(shape=(3,)), op, torch.zeros(1, 2, dtype=F64))
    tau = torch.tensor([0.1, 2.0, 0.0], dtype=F64)
    for k in (5, 15, 19):
        s, s_next = solver.sigmas[k], solver.sigmas[k + 1]
        c = s_next * math.sqrt(s**2 - s_next**2) / s
        a = 1.0 - s_next**2 / s**2
        lam = solver.scale(tau, k)
        want = [min(1.0, c / (a * t)) if t > 0 else 1.0 for t in tau.tolist()]
        torch.testing.assert_close(lam, torch.tensor(want, dtype=F64), rtol=1e-12, atol=1e-12)
        assert float((a * lam * tau).max()) <= c + 1e-12
    assert float(solver.scale(tau, 19)[1]) == 0.0  # last step: no noise left, no correction


def test_ddnm_plus_equals_ddnm_without_noise() -> None:
    prior = ImageMixture()
    op = build_small("super_resolution", shape=IMAGE, sigma=0.0, factor=2)
    y = op(prior.sample(1, torch.Generator().manual_seed(4)))
    plain = solvers.build("ddnm", steps=8).sample(prior, op, y, n=3, seed=1)
    plus = solvers.build("ddnm_plus", steps=8).sample(prior, op, y, n=3, seed=1)
    torch.testing.assert_close(plus.samples, plain.samples, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["ddnm", "ddnm_plus"])
def test_operators_without_an_svd_are_refused_with_the_supported_ones(name: str) -> None:
    prior = ImageMixture()
    solver = solvers.build(name, steps=5)
    blur = build_small("motion_blur", shape=IMAGE, kernel_size=3)
    with pytest.raises(SolverInputError, match=r"cheap SVD .*super_resolution.*not separable"):
        solver.init(prior, blur, torch.zeros(1, *IMAGE, dtype=F64))
    phase = build_small("phase_retrieval", shape=IMAGE)
    with pytest.raises(SolverInputError, match="needs a linear operator"):
        solver.init(prior, phase, torch.zeros(1, *phase.output_shape, dtype=F64))
