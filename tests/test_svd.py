"""operators.svd: the matrix-free SVDs reproduce A exactly (float64 round-off) and refuse the rest.

Each supported operator is small enough (2 x 12 x 12 images, 288 unknowns) to form its matrix
densely, so the singular values are checked against ``torch.linalg.svdvals`` of that matrix.
"""

from __future__ import annotations

import pytest
import torch

import operators
from operators import OperatorInputError
from operators.svd import SUPPORTED, OperatorSVD, svd_of
from tests.operator_cases import build_tiny, random_input

F64 = torch.float64
TOL = {"rtol": 0, "atol": 1e-12}

CASES = {
    "matrix": {},
    "matrix_tall": {"A": torch.randn(9, 4, generator=torch.Generator().manual_seed(1))},
    "matrix_rank_2": {
        "A": torch.randn(5, 2, generator=torch.Generator().manual_seed(2))
        @ torch.randn(2, 7, generator=torch.Generator().manual_seed(3))
    },
    "inpaint_box": {},
    "inpaint_random": {},
    "identity": {},
    "super_resolution": {},  # bicubic x4
    "super_resolution_average": {"mode": "average", "factor": 2},
    "gaussian_blur": {},  # 15 x 15 kernel: direct convolution
    "gaussian_blur_fft": {"kernel_size": 17, "std": 3.0, "method": "fft"},
}


def _operator(case: str) -> operators.Operator:
    name = case.split("_tall")[0].split("_rank")[0].split("_average")[0].split("_fft")[0]
    return build_tiny(name, **CASES[case])


def _dense(op: operators.Operator) -> torch.Tensor:
    """The (m, n) matrix of a linear operator, column by column."""
    n = 1
    for size in op.input_shape:
        n *= size
    basis = torch.eye(n, dtype=F64).view(n, *op.input_shape)
    return op(basis).reshape(n, -1).T


@pytest.mark.parametrize("case", sorted(CASES))
def test_u_s_vt_is_the_operator_and_the_bases_are_orthonormal(case: str) -> None:
    op = _operator(case)
    svd = svd_of(op)
    x = random_input(op, batch=3, seed=4)
    y = op.measure(x, torch.Generator().manual_seed(5))
    s = svd.singular_values
    assert s.shape == op.input_shape and s.dtype == F64 and bool((s >= 0).all())
    torch.testing.assert_close(svd.u(s * svd.v_t(x)), op(x), **TOL)  # A = U diag(s) V^T
    torch.testing.assert_close(svd.v(s * svd.u_t(y)), op.adjoint(y), **TOL)  # A^T = V s U^T
    torch.testing.assert_close(svd.v(svd.v_t(x)), x, **TOL)  # V V^T = I
    c = random_input(op, batch=3, seed=6)
    torch.testing.assert_close(svd.v_t(svd.v(c)), c, **TOL)  # V^T V = I
    # U^T U = I on the singular slots (U has orthonormal columns), zeros elsewhere
    slots = svd.u_t(svd.u(torch.ones_like(c))) != 0
    torch.testing.assert_close(svd.u_t(svd.u(c)), torch.where(slots, c, 0.0), **TOL)
    # u_t is the adjoint of u, v_t of v
    inner = (svd.u(c) * y).flatten(1).sum(1)
    torch.testing.assert_close(inner, (c * svd.u_t(y)).flatten(1).sum(1), **TOL)
    inner = (svd.v(c) * x).flatten(1).sum(1)
    torch.testing.assert_close(inner, (c * svd.v_t(x)).flatten(1).sum(1), **TOL)


@pytest.mark.parametrize("case", sorted(CASES))
def test_singular_values_are_those_of_the_dense_matrix(case: str) -> None:
    op = _operator(case)
    svd = svd_of(op)
    dense = _dense(op)
    want = torch.linalg.svdvals(dense)
    got = svd.singular_values.flatten().sort(descending=True).values[: want.shape[0]]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12 * float(want[0]))
    rank = int(torch.linalg.matrix_rank(dense))
    assert int(svd.observed.sum()) == rank


def test_wide_operators_keep_y_and_masks_are_diagonal() -> None:
    """Where range(U) is the whole measurement space (m <= n on every axis), u(u_t(y)) = y;
    inpainting is diagonal: V = I and s = the mask in every channel."""
    for case in ("matrix", "super_resolution", "gaussian_blur"):
        op = _operator(case)
        y = torch.randn(2, *op.output_shape, generator=torch.Generator().manual_seed(7), dtype=F64)
        svd = svd_of(op)
        torch.testing.assert_close(svd.u(svd.u_t(y)), y, **TOL)
    op = _operator("inpaint_random")
    svd = svd_of(op)
    x = random_input(op)
    assert torch.equal(svd.v_t(x), x)
    assert torch.equal(svd.singular_values, op.mask.to(F64).expand(op.input_shape))


@pytest.mark.parametrize("name", ["motion_blur", "phase_retrieval", "hdr"])
def test_operators_without_a_cheap_svd_are_refused_with_the_supported_ones(name: str) -> None:
    op = build_tiny(name)
    reason = "not separable" if name == "motion_blur" else f"no cheap SVD for the nonlinear.*{name}"
    with pytest.raises(OperatorInputError, match=reason) as info:
        svd_of(op)
    assert all(supported in str(info.value) for supported in SUPPORTED)


def test_a_stack_of_problems_is_refused_with_the_fix() -> None:
    ops = [build_tiny("inpaint_random", seed=i) for i in range(2)]
    stacked = operators.stack_rows(ops, 2)
    with pytest.raises(OperatorInputError, match=r"row_groups\(\)"):
        svd_of(stacked)


def test_inputs_of_the_wrong_shape_are_refused() -> None:
    svd: OperatorSVD = svd_of(_operator("super_resolution"))
    with pytest.raises(OperatorInputError, match=r"v_t input has shape \(2, 2, 3, 3\)"):
        svd.v_t(torch.zeros(2, 2, 3, 3, dtype=F64))
