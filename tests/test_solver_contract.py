"""The steppable Solver contract (DESIGN.md, "Solver"), checked for every registered solver.

Each solver runs on a small MCGdiff Gaussian-mixture problem (pixel, or through the linear
decoder for latent solvers) with tiny settings. Solver-specific tests check the mathematics;
these check that every solver keeps the same promises: stepping by hand equals ``sample``, a
seed fixes the result, particles do not depend on their batch, ``select`` continues particles
exactly, ``force`` is an extra drift of the state's shape, and bad problems are refused.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import solvers
from solvers import SolverInputError
from solvers.priors.gmm import GMMProblem, mcgdiff_problem

# solver -> (preset, tiny overrides, latent problem?)
CASES: dict[str, tuple[str | None, dict[str, Any], bool]] = {
    "dps": (None, {"num_steps": 6}, False),
    "latent_dps": (None, {"num_steps": 6}, True),
    "daps": ("gmm/pixel_hmc", {"annealing_steps": 4, "mcmc_steps": 3}, False),
    "daps_opt": (
        "gmm/latent_hmc_opt",
        {"annealing_steps": 4, "mcmc_steps": 3, "opt_start": 1, "opt_end": 3, "opt_iterations": 2},
        True,
    ),
    "resample": (
        None,
        {"steps": 12, "skip": 2, "lookahead": 2, "pixel_iters": 10, "latent_iters": 10},
        False,
    ),
    "noise_langevin": (
        None,
        {"warm_steps": 2, "langevin_steps": 3, "step_size": 1e-3, "generator_steps": 3},
        False,
    ),
    "cdps": (None, {"steps": 8}, False),
}


def _case(name: str) -> tuple[solvers.Solver, GMMProblem]:
    preset, overrides, latent = CASES[name]
    return solvers.build(name, preset, **overrides), mcgdiff_problem(8, 2, 0, latent=latent)


def _run_by_hand(solver: solvers.Solver, p: GMMProblem, n: int, seed: int, **init: Any):
    state = solver.init(p.prior, p.operator, p.y, n, seed, **init)
    for k in range(solver.num_steps):
        state = solver.step(state, k)
    return solver.result(state)


def test_every_registered_solver_has_a_contract_case() -> None:
    assert sorted(CASES) == solvers.available()


@pytest.mark.parametrize("name", sorted(CASES))
def test_stepping_by_hand_equals_sample_and_counts_nfe(name: str) -> None:
    solver, p = _case(name)
    before = p.prior.nfe
    result = solver.sample(p.prior, p.operator, p.y, n=3, seed=5)
    assert result.nfe == p.prior.nfe - before > 0
    assert result.samples.shape == (3, *p.operator.input_shape)
    assert len(result.traces["loss"]) == len(result.traces["sigma"]) == solver.num_steps
    assert result.status == ["ok"] * 3
    torch.testing.assert_close(_run_by_hand(solver, p, 3, 5), result.samples, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_seed_fixes_the_samples(name: str) -> None:
    solver, p = _case(name)
    first = solver.sample(p.prior, p.operator, p.y, n=3, seed=11).samples
    again = solver.sample(p.prior, p.operator, p.y, n=3, seed=11).samples
    other = solver.sample(p.prior, p.operator, p.y, n=3, seed=12).samples
    assert torch.equal(first, again)
    assert (first - other).abs().amax(1).min() > 1e-6  # every particle changes


@pytest.mark.parametrize("name", sorted(CASES))
def test_particles_do_not_depend_on_their_batch(name: str) -> None:
    solver, p = _case(name)
    together = solver.sample(p.prior, p.operator, p.y, n=4, seed=3).samples
    apart = _run_by_hand(solver, p, 2, 3, indices=[3, 1])
    torch.testing.assert_close(apart, together[[3, 1]], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(CASES))
def test_select_continues_the_chosen_particles_exactly(name: str) -> None:
    solver, p = _case(name)
    state = solver.init(p.prior, p.operator, p.y, 4, 9)
    half = solver.num_steps // 2
    for k in range(half):
        state = solver.step(state, k)
    chosen = state.select([2, 0, 2])
    assert chosen.indices == [2, 0, 2]
    for k in range(half, solver.num_steps):
        state = solver.step(state, k)
        chosen = solver.step(chosen, k)
    full, picked = solver.result(state), solver.result(chosen)
    torch.testing.assert_close(picked, full[[2, 0, 2]], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(CASES))
def test_force_is_an_extra_drift_of_the_state_shape(name: str) -> None:
    solver, p = _case(name)

    def run(force_scale: float | None) -> torch.Tensor:
        state = solver.init(p.prior, p.operator, p.y, 3, 4)
        for k in range(solver.num_steps):
            force = None if force_scale is None else torch.full_like(state.x, force_scale)
            state = solver.step(state, k, force=force)
        return solver.result(state)

    plain = run(None)
    torch.testing.assert_close(run(0.0), plain, rtol=1e-12, atol=1e-12)
    assert (run(1.0) - plain).abs().amax(1).min() > 1e-6
    state = solver.init(p.prior, p.operator, p.y, 3, 4)
    with pytest.raises(SolverInputError, match="force"):
        solver.step(state, 0, force=torch.zeros(3, 1))


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_measurements_are_refused_with_the_fix(name: str) -> None:
    solver, p = _case(name)
    with pytest.raises(SolverInputError, match=r"y has shape \(3,\)"):
        solver.init(p.prior, p.operator, torch.zeros(3, dtype=p.y.dtype))
    with pytest.raises(SolverInputError, match="NaN or infinite"):
        solver.init(p.prior, p.operator, torch.full_like(p.y, float("nan")))


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_prior_of_the_wrong_kind_is_refused(name: str) -> None:
    solver, _ = _case(name)
    other = mcgdiff_problem(8, 2, 0, latent=not CASES[name][2])
    if solver.latent is None:
        solver.init(other.prior, other.operator, other.y)  # both kinds are fine
    else:
        with pytest.raises(SolverInputError, match=r"latent prior|pixel space"):
            solver.init(other.prior, other.operator, other.y)


@pytest.mark.parametrize(
    ("name", "preset", "latent", "match"),
    [
        ("daps", "pixel_hmc/super_resolution", True, "tuned for a pixel prior"),
        ("daps", "ldm_hmc/super_resolution", False, "tuned for a latent prior"),
        ("daps", "pixel_hmc/super_resolution", False, "tuned for the 'super_resolution'"),
        ("dps", "pixel/inpaint_box", False, "operator is 'matrix'"),
        ("noise_langevin", "cm/super_resolution_x4", False, "'super_resolution' operator"),
    ],
)
def test_a_preset_for_another_backbone_or_task_is_refused(
    name: str, preset: str, latent: bool, match: str
) -> None:
    p = mcgdiff_problem(8, 2, 0, latent=latent)
    with pytest.raises(SolverInputError, match=match):
        solvers.build(name, preset).init(p.prior, p.operator, p.y)


def test_benchmark_presets_fit_the_benchmark() -> None:
    for name in solvers.available():
        for preset in solvers.presets(name):
            if preset.startswith("gmm"):
                latent = solvers.solver_class(name).latent is True or "latent" in preset
                p = mcgdiff_problem(8, 2, 0, latent=latent)
                solvers.build(name, preset).init(p.prior, p.operator, p.y, 2)
