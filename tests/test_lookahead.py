"""``Solver.lookahead_loss``: the loss of the denoised estimate of the current state, against
Tweedie's estimate computed by hand from each solver's own noise grid (GMM prior: the denoiser
is exact)."""

from __future__ import annotations

import math

import pytest
import torch

import solvers
from solvers.base import STATUS_NONFINITE, SolverInputError
from solvers.priors.gmm import mcgdiff_problem


@pytest.fixture(scope="module")
def problem():
    return mcgdiff_problem(8, 2, 1)


def _advance(solver, problem, steps: int):
    state = solver.init(problem.prior, problem.operator, problem.y, 5, 4)
    for k in range(steps):
        state = solver.step(state, k)
    return state


def test_dps_lookahead_is_the_tweedie_estimate_at_its_level(problem) -> None:
    solver = solvers.build("dps", "gmm", num_steps=20)
    state = _advance(solver, problem, 6)
    x0hat = problem.prior.denoise(state.x, solver.sigmas[6])
    expected = problem.operator.loss(x0hat, problem.y).double()
    torch.testing.assert_close(solver.lookahead_loss(state, 6), expected)
    assert not torch.allclose(expected, solver.measurement_loss(state).double())


def test_vp_grid_lookahead_rescales_the_vp_state(problem) -> None:
    solver = solvers.build("cdps", "gmm", steps=20)
    state = _advance(solver, problem, 6)
    ab = float(solver.levels[20 - 6])
    x0hat = problem.prior.denoise(state.x / math.sqrt(ab), math.sqrt((1 - ab) / ab))
    expected = problem.operator.loss(x0hat, problem.y).double()
    torch.testing.assert_close(solver.lookahead_loss(state, 6), expected)


def test_stopped_particles_rank_last_and_chainless_solvers_refuse(problem) -> None:
    solver = solvers.build("dps", "gmm", num_steps=20)
    state = _advance(solver, problem, 3)
    state.status[1] = STATUS_NONFINITE
    loss = solver.lookahead_loss(state, 3)
    assert math.isinf(float(loss[1])) and bool(torch.isfinite(loss[[0, 2, 3, 4]]).all())
    with pytest.raises(SolverInputError, match="rank pruning by 'estimate'"):
        solvers.base.Solver().denoised(state.x, 0)
