"""Contract tests generated over every registered operator (as deepinv does for its physics)."""

from __future__ import annotations

import math

import pytest
import torch

import operators
from operators import OperatorInputError
from tests.operator_cases import SEEDED, SMALL, build_small, build_tiny, random_input

ALL = operators.available()
LINEAR = [name for name in ALL if operators.operator_class(name).is_linear]


def test_every_registered_operator_has_a_contract_case():
    assert set(SMALL) == set(ALL)


def test_the_seed_tasks_are_all_registered():
    seed_tasks = {
        "inpaint_box",
        "inpaint_random",
        "super_resolution",
        "gaussian_blur",
        "motion_blur",
        "phase_retrieval",
        "nonlinear_blur",
        "hdr",
        "matrix",
        "identity",
    }
    assert seed_tasks <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_output_shape_and_dtype(name):
    for dtype in (torch.float32, torch.float64):
        op = build_small(name, dtype)
        y = op(random_input(op, dtype=dtype))
        assert y.shape == (3, *op.output_shape)
        assert y.dtype == dtype


@pytest.mark.parametrize("name", ALL)
def test_float32_agrees_with_float64(name):
    op64 = build_small(name, torch.float64)
    op32 = build_small(name, torch.float32)
    x = random_input(op64)
    y64, y32 = op64(x), op32(x.float())
    scale = y64.abs().max().clamp_min(1.0)
    assert (y32.double() - y64).abs().max() / scale < 1e-4


@pytest.mark.parametrize("name", LINEAR)
def test_adjointness(name):
    op = build_small(name)
    x = random_input(op, seed=1)
    v = torch.randn(
        3, *op.output_shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    lhs = (op(x) * v).flatten(1).sum(1)
    rhs = (x * op.adjoint(v)).flatten(1).sum(1)
    rel = (lhs - rhs).abs() / lhs.abs().clamp_min(1e-12)
    assert rel.max() < 1e-5


@pytest.mark.parametrize("name", LINEAR)
def test_adjoint_equals_autograd_vjp(name):
    op = build_small(name)
    x = random_input(op, seed=1).requires_grad_(True)
    v = torch.randn(
        3, *op.output_shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64
    )
    (vjp,) = torch.autograd.grad(op(x), x, grad_outputs=v)
    torch.testing.assert_close(op.adjoint(v), vjp, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ALL)
def test_batch_items_are_independent(name):
    op = build_small(name)
    x = random_input(op, batch=3)
    y = op(x)
    x_changed = x.clone()
    x_changed[1] = random_input(op, batch=1, seed=9)[0]
    y_changed = op(x_changed)
    torch.testing.assert_close(y_changed[[0, 2]], y[[0, 2]], rtol=0, atol=0)
    assert not torch.allclose(y_changed[1], y[1])
    for i in range(3):  # one at a time equals the batch
        torch.testing.assert_close(op(x[i : i + 1])[0], y[i], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_forward_is_differentiable(name):
    op = build_small(name)
    x = random_input(op).requires_grad_(True)
    (grad,) = torch.autograd.grad(op(x).pow(2).sum(), x)
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_same_generator_same_measurement(name):
    op = build_small(name)
    x = random_input(op)
    y1 = op.measure(x, torch.Generator().manual_seed(5))
    y2 = op.measure(x, torch.Generator().manual_seed(5))
    y3 = op.measure(x, torch.Generator().manual_seed(6))
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    assert not torch.allclose(y1, y3)


@pytest.mark.parametrize("name", ALL)
def test_measurement_noise_has_the_requested_standard_deviation(name):
    op = build_small(name, sigma=0.3)
    x = random_input(op, batch=64)
    noise = op.measure(x, torch.Generator().manual_seed(0)) - op(x)
    n = noise.numel()
    assert abs(noise.std().item() - 0.3) < 4 * 0.3 / math.sqrt(2 * n)
    assert abs(noise.mean().item()) < 4 * 0.3 / math.sqrt(n)


@pytest.mark.parametrize("name", ALL)
def test_loss_and_log_likelihood(name):
    op = build_small(name, sigma=0.2)
    x = random_input(op)
    y = op.measure(x, torch.Generator().manual_seed(1))
    expected_loss = (op(x) - y).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(op.loss(x, y), expected_loss)
    normal = torch.distributions.Normal(op(x), 0.2)
    torch.testing.assert_close(op.log_likelihood(x, y), normal.log_prob(y).flatten(1).sum(1))
    torch.testing.assert_close(op.loss(x, y[0]), (op(x) - y[0]).pow(2).flatten(1).sum(1))


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip(name):
    op = build_small(name)
    seed_kw = {"seed": 1} if name in SEEDED else {}
    other = build_small(name, **seed_kw)
    x = random_input(op)
    if name in SEEDED:  # a different seed draws a different mask / kernel / code
        assert not torch.allclose(other(x), op(x))
    other.load_state_dict(op.state_dict())
    torch.testing.assert_close(other(x), op(x), rtol=0, atol=0)
    for key, value in op.state_dict().items():
        torch.testing.assert_close(other.state_dict()[key], value, rtol=0, atol=0)


# Blurs are too ill-conditioned for an undamped solve to converge; the damped test covers them.
WELL_CONDITIONED = ["identity", "inpaint_box", "inpaint_random", "super_resolution", "matrix"]


def test_well_conditioned_cases_are_linear_operators():
    assert set(WELL_CONDITIONED) <= set(LINEAR)


@pytest.mark.parametrize("name", WELL_CONDITIONED)
def test_pseudo_inverse_by_cg_is_the_minimum_norm_least_squares_solution(name):
    op = build_tiny(name, sigma=0.1)
    x = random_input(op, batch=2)
    y = op.measure(x, torch.Generator().manual_seed(2))
    x_hat = op.pseudo_inverse(y, tol=1e-10, max_iter=2000)
    dense = _dense_matrix(op)
    expected = torch.linalg.lstsq(dense, y.flatten(1).T, driver="gelsd").solution.T
    # lstsq returns the minimum-norm solution for rank-deficient systems
    scale = expected.abs().max()
    assert (x_hat.flatten(1) - expected).abs().max() / scale < 1e-5


@pytest.mark.parametrize("name", LINEAR)
def test_damped_solve_matches_closed_form(name):
    op = build_tiny(name, sigma=0.1)
    x = random_input(op, batch=2)
    x0 = random_input(op, batch=2, seed=7)
    y = op(x)
    x_hat = op.pseudo_inverse(y, damping=0.5, x0=x0, tol=1e-12, max_iter=2000)
    dense = _dense_matrix(op)
    lhs = dense.T @ dense + 0.5 * torch.eye(dense.shape[1], dtype=torch.float64)
    rhs = dense.T @ y.flatten(1).T + 0.5 * x0.flatten(1).T
    expected = torch.linalg.solve(lhs, rhs).T
    torch.testing.assert_close(x_hat.flatten(1), expected, rtol=1e-7, atol=1e-8)


def _dense_matrix(op: operators.LinearOperator) -> torch.Tensor:
    """The operator as a dense (m, n) float64 matrix, column by column from unit vectors."""
    n = math.prod(op.input_shape)
    eye = torch.eye(n, dtype=torch.float64).view(n, *op.input_shape)
    return op(eye).flatten(1).T


# -- bad input -----------------------------------------------------------------------------
def test_unknown_name_lists_the_available_operators():
    with pytest.raises(OperatorInputError, match=r"unknown operator 'deblur'.*gaussian_blur"):
        operators.build("deblur")


@pytest.mark.parametrize("name", ALL)
def test_negative_or_nonfinite_sigma_is_refused(name):
    for bad in (-0.1, float("nan"), float("inf"), "a lot"):
        with pytest.raises(OperatorInputError, match="sigma"):
            build_small(name, sigma=bad)


@pytest.mark.parametrize("name", ALL)
def test_wrong_shape_is_refused_with_the_expected_shape(name):
    op = build_small(name)
    x = random_input(op)
    with pytest.raises(OperatorInputError, match="expected"):
        op(x[..., :-1])  # one element short on the last axis
    with pytest.raises(OperatorInputError, match="expected"):
        op(x[0])  # missing batch dimension


@pytest.mark.parametrize("name", [n for n in ALL if n != "matrix"])
def test_wrong_channel_count_is_named(name):
    op = build_small(name)
    x = random_input(op)
    with pytest.raises(OperatorInputError, match="channel count 1 != 3"):
        op(x[:, :1])


@pytest.mark.parametrize("name", ALL)
def test_nonfinite_input_is_refused(name):
    op = build_small(name)
    x = random_input(op)
    x.view(-1)[3] = float("nan")
    with pytest.raises(OperatorInputError, match="NaN or infinite"):
        op(x)
    y = op(random_input(op)).contiguous()
    y.view(-1)[0] = float("inf")
    with pytest.raises(OperatorInputError, match="NaN or infinite"):
        op.loss(random_input(op), y)


def test_integer_input_is_refused():
    op = build_small("identity")
    with pytest.raises(OperatorInputError, match="floating-point"):
        op(torch.zeros(1, *op.input_shape, dtype=torch.int64))


def test_measurement_batch_mismatch_is_refused():
    op = build_small("identity")
    with pytest.raises(OperatorInputError, match="batch size 2 but x has 3"):
        op.loss(random_input(op, batch=3), random_input(op, batch=2))


def test_log_likelihood_needs_positive_sigma():
    op = build_small("identity", sigma=0.0)
    x = random_input(op)
    torch.testing.assert_close(op.measure(x, torch.Generator().manual_seed(0)), x)
    with pytest.raises(OperatorInputError, match="sigma > 0"):
        op.log_likelihood(x, x)


# -- rows of several problems (operators.stack_rows) -------------------------------------------
COUNTS = (2, 1, 3)  # rows of each of the three problems


def _problem_operators(name: str, first_seed: int = 0) -> list[operators.Operator]:
    """Three operators of one kind whose random parts differ (seeded kinds), or three copies."""
    if name == "matrix":
        gen = torch.Generator().manual_seed(first_seed)
        return [build_small(name, A=torch.randn(5, 12, generator=gen)) for _ in COUNTS]
    if name in SEEDED:
        return [build_small(name, seed=first_seed + p) for p in range(len(COUNTS))]
    return [build_small(name) for _ in COUNTS]


def _per_problem(ops: list[operators.Operator], method: str, *tensors: torch.Tensor):
    """Each problem's operator on its own rows (the COUNTS layout), rows concatenated."""
    parts = zip(*(t.split(list(COUNTS)) for t in tensors), strict=True)
    return torch.cat([getattr(op, method)(*part) for op, part in zip(ops, parts, strict=True)])


@pytest.mark.parametrize("name", ALL)
def test_stacked_rows_equal_each_problems_operator(name):
    ops = _problem_operators(name)
    stacked = operators.stack_rows(ops, COUNTS)
    rows = sum(COUNTS)
    assert stacked.row_count == rows and stacked.name == name
    assert stacked.is_linear == ops[0].is_linear
    assert stacked.input_shape == ops[0].input_shape
    assert stacked.output_shape == ops[0].output_shape
    x = random_input(stacked, batch=rows, seed=5)
    assert torch.equal(stacked(x), _per_problem(ops, "forward", x))
    gen = torch.Generator().manual_seed(6)
    v = torch.randn(rows, *stacked.output_shape, generator=gen, dtype=torch.float64)
    assert torch.equal(stacked.loss(x, v), _per_problem(ops, "loss", x, v))
    if stacked.is_linear:
        assert torch.equal(stacked.adjoint(v), _per_problem(ops, "adjoint", v))
    # measuring the rows = each problem measuring its rows in turn from the same generator
    measured = stacked.measure(x, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    parts = zip(ops, x.split(list(COUNTS)), strict=True)
    assert torch.equal(measured, torch.cat([op.measure(part, gen) for op, part in parts]))
    if name in SEEDED or name == "matrix":  # the problems' random parts do differ
        assert not torch.equal(stacked(x)[:2], ops[1](x[:2]))


@pytest.mark.parametrize("name", ["inpaint_random", "matrix"])
def test_take_rows_restricts_the_stack(name):
    ops = _problem_operators(name)
    stacked = operators.stack_rows(ops, COUNTS)  # rows: problem 0, 0, 1, 2, 2, 2
    x = random_input(stacked, batch=sum(COUNTS), seed=1)
    index = [5, 0, 2, 0]
    sub = stacked.take_rows(index)
    assert sub.row_count == 4
    # a problem's sub-batch has another size here, which a matmul may round differently
    close = {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(sub(x[index]), stacked(x)[index], **close)
    mask = torch.tensor([False, False, True, True, False, True])
    torch.testing.assert_close(stacked.take_rows(mask)(x[mask]), stacked(x)[mask], **close)
    assert stacked.take_rows([3, 5]) is ops[2]  # rows of one problem: its own operator
    assert stacked.take_rows(torch.ones(6, dtype=torch.bool)) is stacked
    assert stacked.take_rows(torch.tensor([1])) is ops[0]
    groups = stacked.row_groups()
    assert [part for part, _ in groups] == ops
    assert [rows.tolist() for _, rows in groups] == [[0, 1], [2], [3, 4, 5]]
    plain = ops[0]
    assert plain.take_rows([4, 1]) is plain and plain.row_groups() == [(plain, None)]
    assert plain.row_count is None
    with pytest.raises(OperatorInputError, match="exactly 4 rows"):
        sub(x)


@pytest.mark.parametrize("name", ["inpaint_random", "motion_blur", "matrix"])
def test_stacked_state_dict_round_trip(name):
    ops, others = _problem_operators(name, 0), _problem_operators(name, 10)
    stacked = operators.stack_rows(ops, COUNTS)
    other = operators.stack_rows(others, COUNTS)
    x = random_input(stacked, batch=sum(COUNTS))
    assert not torch.equal(other(x), stacked(x))
    other.load_state_dict(stacked.state_dict())
    torch.testing.assert_close(other(x), stacked(x), rtol=0, atol=0)
    keys = {f"parts.{p}.{key}" for p in range(len(ops)) for key in ops[0].state_dict()}
    assert set(stacked.state_dict()) == keys


def test_stack_rows_refuses_problems_that_do_not_fit():
    op = build_small("inpaint_random")
    assert operators.stack_rows([op, op, op], 2) is op  # one operator for every problem
    with pytest.raises(OperatorInputError, match="same name, shapes and sigma"):
        operators.stack_rows([op, build_small("inpaint_random", sigma=0.1)], 2)
    with pytest.raises(OperatorInputError, match="same name, shapes and sigma"):
        operators.stack_rows([op, build_small("inpaint_box")], 2)
    with pytest.raises(OperatorInputError, match="one per operator"):
        operators.stack_rows([op, build_small("inpaint_random", seed=1)], [2, 2, 2])
    with pytest.raises(OperatorInputError, match="positive count"):
        operators.stack_rows([op, build_small("inpaint_random", seed=1)], 0)
    with pytest.raises(OperatorInputError, match="at least one operator"):
        operators.stack_rows([], 2)
