"""The steppable Solver contract (docs/architecture.md), checked for every registered solver.

Each solver runs on a small MCGdiff Gaussian-mixture problem (pixel, or through the linear
decoder for latent solvers) with tiny settings. Solver-specific tests check the mathematics;
these check that every solver keeps the same promises: stepping by hand equals ``sample``, a
seed fixes the result, particles do not depend on their batch, ``select`` continues particles
exactly, ``force`` is an extra drift of the state's shape, and bad problems are refused. A batch
of several problems (per-row y, seeds and, through ``operators.stack_rows``, operators) gives
row for row the samples of the separate runs, on GMM and image operators (tests/problem_batches).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import operators
import solvers
from solvers import SolverInputError, SolverSpec
from solvers.base import STATUS_PRUNED
from solvers.priors.gmm import GMMProblem, mcgdiff_problem
from tests.problem_batches import CASES, Batch

GMM_TASK = "matrix"  # the operator of the MCGdiff Gaussian-mixture problems

# Tiny settings of the built-in solvers, so that the contract runs fast. A solver without an
# entry runs its first preset for the GMM task (or its defaults): adding a solver needs no edit.
TINY: dict[str, SolverSpec] = {
    "dps": SolverSpec("dps", None, {"num_steps": 6}),
    "latent_dps": SolverSpec("latent_dps", None, {"num_steps": 6}),
    "daps": SolverSpec("daps", "gmm/pixel_hmc", {"annealing_steps": 4, "mcmc_steps": 3}),
    "daps_opt": SolverSpec(
        "daps_opt",
        "gmm/latent_hmc_opt",
        {"annealing_steps": 4, "mcmc_steps": 3, "opt_start": 1, "opt_end": 3, "opt_iterations": 2},
    ),
    "resample": SolverSpec(
        "resample",
        None,
        {"steps": 12, "skip": 2, "lookahead": 2, "pixel_iters": 10, "latent_iters": 10},
    ),
    "noise_langevin": SolverSpec(
        "noise_langevin",
        None,
        {"warm_steps": 2, "langevin_steps": 3, "step_size": 1e-3, "generator_steps": 3},
    ),
    "cdps": SolverSpec("cdps", None, {"steps": 8}),
    "fps_smc": SolverSpec("fps_smc", None, {"steps": 8}),
    "tds": SolverSpec("tds", "gmm", {"num_steps": 6}),
    "latent_tds": SolverSpec("latent_tds", "gmm", {"num_steps": 6}),
}


def contract_spec(name: str) -> SolverSpec:
    """The settings the contract runs solver ``name`` with."""
    if name in TINY:
        return TINY[name]
    gmm = [k for k, p in solvers.presets(name).items() if p.task == GMM_TASK]
    return SolverSpec(name, gmm[0] if gmm else None)


def _latent(spec: SolverSpec) -> bool:
    """Whether the contract problem of ``spec`` is the latent (linear decoder) variant."""
    return solvers.backbones(spec.name, spec.preset)[0] == "latent"


def _case(name: str) -> tuple[solvers.Solver, GMMProblem]:
    spec = contract_spec(name)
    return spec.build(), mcgdiff_problem(8, 2, 0, latent=_latent(spec))


def _run_by_hand(solver: solvers.Solver, p: GMMProblem, n: int, seed: int, **init: Any):
    state = solver.init(p.prior, p.operator, p.y, n, seed, **init)
    for k in range(solver.num_steps):
        state = solver.step(state, k)
    return solver.result(state)


def test_every_built_in_solver_has_tiny_settings() -> None:
    assert set(TINY) <= set(solvers.available())
    assert {"cdps", "daps", "daps_opt", "dps", "latent_dps", "noise_langevin", "resample"} <= set(
        TINY
    )


@pytest.mark.parametrize("name", solvers.available())
def test_stepping_by_hand_equals_sample_and_counts_nfe(name: str) -> None:
    solver, p = _case(name)
    before = p.prior.nfe
    result = solver.sample(p.prior, p.operator, p.y, n=3, seed=5)
    assert result.nfe == p.prior.nfe - before > 0
    assert result.samples.shape == (3, *p.operator.input_shape)
    assert len(result.traces["loss"]) == len(result.traces["sigma"]) == solver.num_steps
    assert result.status == ["ok"] * 3
    torch.testing.assert_close(_run_by_hand(solver, p, 3, 5), result.samples, rtol=0, atol=0)


@pytest.mark.parametrize("name", solvers.available())
def test_a_seed_fixes_the_samples(name: str) -> None:
    solver, p = _case(name)
    first = solver.sample(p.prior, p.operator, p.y, n=3, seed=11).samples
    again = solver.sample(p.prior, p.operator, p.y, n=3, seed=11).samples
    other = solver.sample(p.prior, p.operator, p.y, n=3, seed=12).samples
    assert torch.equal(first, again)
    assert (first - other).abs().amax(1).min() > 1e-6  # every particle changes


@pytest.mark.parametrize("name", solvers.available())
def test_particles_do_not_depend_on_their_batch(name: str) -> None:
    solver, p = _case(name)
    together = solver.sample(p.prior, p.operator, p.y, n=4, seed=3).samples
    apart = _run_by_hand(solver, p, 2, 3, indices=[3, 1])
    torch.testing.assert_close(apart, together[[3, 1]], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", solvers.available())
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


@pytest.mark.parametrize("name", solvers.available())
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


@pytest.mark.parametrize("name", solvers.available())
def test_a_step_before_init_or_outside_the_grid_is_refused(name: str) -> None:
    solver, p = _case(name)
    with pytest.raises(SolverInputError, match=r"call init\(prior, operator, y, \.\.\.\) before"):
        solver.step(None, 0)  # type: ignore[arg-type]
    state = solver.init(p.prior, p.operator, p.y, n=2)
    for k in (-1, solver.num_steps, 0.5):
        with pytest.raises(SolverInputError, match=r"step index k must be an integer in \[0, "):
            solver.step(state, k)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", solvers.available())
def test_bad_measurements_are_refused_with_the_fix(name: str) -> None:
    solver, p = _case(name)
    with pytest.raises(SolverInputError, match=r"y has shape \(3,\)"):
        solver.init(p.prior, p.operator, torch.zeros(3, dtype=p.y.dtype))
    with pytest.raises(SolverInputError, match="NaN or infinite"):
        solver.init(p.prior, p.operator, torch.full_like(p.y, float("nan")))


@pytest.mark.parametrize("name", solvers.available())
def test_a_prior_of_the_wrong_kind_is_refused(name: str) -> None:
    solver, _ = _case(name)
    other = mcgdiff_problem(8, 2, 0, latent=not _latent(contract_spec(name)))
    if solvers.backbones(solver.name, solver.preset) == ("pixel", "latent"):
        solver.init(other.prior, other.operator, other.y)  # both kinds are fine
    else:  # the solver, or its preset, is for one kind only
        with pytest.raises(SolverInputError, match=r"latent prior|pixel space|tuned for a"):
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


@pytest.mark.parametrize("name", solvers.available())
def test_pruned_and_stopped_particles_cost_nothing(name: str) -> None:
    """The template hands only running particles to the update: with particles 1 and 3 pruned,
    every network call sees 2 rows, and the pruned ones keep their values and random streams."""
    solver, p = _case(name)
    state = solver.init(p.prior, p.operator, p.y, 4, 2)
    rows: list[int] = []
    for method in ("denoise", "decode"):
        inner = getattr(p.prior, method)

        def counted(x: torch.Tensor, *args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
            rows.append(x.shape[0])
            return _inner(x, *args, **kwargs)

        setattr(p.prior, method, counted)
    state.status = state.status.clone()
    state.status[[1, 3]] = STATUS_PRUNED
    before = [g.get_state() for g in state.generators]
    frozen = state.select([1, 3])
    nfe = p.prior.nfe
    for k in range(solver.num_steps):
        state = solver.step(state, k)
    assert p.prior.nfe > nfe and rows and set(rows) == {2}
    assert torch.equal(state.x[[1, 3]], frozen.x) and torch.equal(state.x0[[1, 3]], frozen.x0)
    assert state.status.tolist() == [0, STATUS_PRUNED, 0, STATUS_PRUNED]
    for i in (1, 3):
        assert torch.equal(state.generators[i].get_state(), before[i])


def test_every_preset_builds_and_fits_its_solver() -> None:
    for name in solvers.available():
        for preset, info in solvers.presets(name).items():
            solver = solvers.build(name, preset)
            assert info.source and solver.preset_info is info
            if solver.latent is not None and info.backbone is not None:
                assert (info.backbone == "latent") == solver.latent, (name, preset)


def test_benchmark_presets_fit_the_benchmark() -> None:
    for name in solvers.available():
        for preset, info in solvers.presets(name).items():
            if info.task == GMM_TASK:
                for backbone in solvers.backbones(name, preset):
                    p = mcgdiff_problem(8, 2, 0, latent=backbone == "latent")
                    solvers.build(name, preset).init(p.prior, p.operator, p.y, 2)


# -- batches of several problems -------------------------------------------------------------------
PROBLEMS, PARTICLES = 3, 2
PROBLEM_SEEDS = (21, 5, 13)
# Batched and separate runs apply the same per-row arithmetic, but the prior's matmuls (and the
# operators' sub-batches) see 6 rows instead of 2, and BLAS kernels may block a product
# differently by batch size; C-DPS also divides by a per-row Sigma tensor instead of a number
# when the problems' ||A|| differ. That is float64 round-off (1e-16 relative per operation);
# measured differences are 1e-16 to 4e-11 (noise_langevin, whose Adam divides by tiny moments),
# so 1e-9, the tolerance of test_particles_do_not_depend_on_their_batch. The random streams
# must be equal.
BATCH_TOLERANCE = {"rtol": 1e-9, "atol": 1e-9}


def _spec_for(name: str, task: str) -> SolverSpec:
    """The contract settings of ``name``; a preset tuned for another task becomes overrides."""
    spec = contract_spec(name)
    info = solvers.presets(name)[spec.preset] if spec.preset is not None else None
    if info is None or info.task in (None, task):
        return spec
    return SolverSpec(name, None, {**info.overrides, **spec.overrides})


def _problem_batch(name: str, case: str, problems: int = PROBLEMS) -> tuple[SolverSpec, Batch]:
    batch = CASES[case](_latent(contract_spec(name)), problems)
    return _spec_for(name, batch.operators[0].name), batch


def _accepts(name: str, case: str) -> bool:
    """Whether solver ``name`` takes the problem of ``case``: linear-only solvers (C-DPS) refuse
    phase retrieval, ILVR every operator but super-resolution and the GMM matrix; the solvers'
    own tests check those refusals (tests/test_cdps.py, tests/test_projection_solvers.py)."""
    spec, batch = _problem_batch(name, case, 1)
    try:
        spec.build().check_problem(batch.prior, batch.operators[0], batch.ys[0])
    except SolverInputError:
        return False
    return True


def _runnable_cases() -> list[tuple[str, str]]:
    """(solver, case) pairs the solver accepts (``_accepts``)."""
    return [
        (name, case)
        for name in solvers.available()
        for case in sorted(CASES)
        if _accepts(name, case)
    ]


def _stacked_case(name: str) -> str:
    """The case with per-row operators that ``name`` runs: per-row masks, else per-row A."""
    return (
        "inpaint_random_stacked" if _accepts(name, "inpaint_random_stacked") else "matrix_stacked"
    )


@pytest.mark.parametrize("name", solvers.available())
def test_every_solver_takes_the_gmm_cases(name: str) -> None:
    assert _accepts(name, "matrix") and _accepts(name, "matrix_stacked")


def _batched_init(solver: solvers.Solver, batch: Batch) -> solvers.State:
    """k problems x m particles in one state: rows (problem p, particle i), problem after
    problem, each with the problem's y, seed and operator."""
    operator = operators.stack_rows(batch.operators, PARTICLES)
    y = torch.cat([y.expand(PARTICLES, *y.shape[1:]) for y in batch.ys])
    seeds = [seed for seed in PROBLEM_SEEDS for _ in range(PARTICLES)]
    indices = list(range(PARTICLES)) * PROBLEMS
    return solver.init(batch.prior, operator, y, seed=seeds, indices=indices)


def _separate(
    spec: SolverSpec, batch: Batch
) -> list[tuple[torch.Tensor, torch.Tensor, list[torch.Generator]]]:
    """(samples, losses, generators) of one run per problem, seeded by the problem's seed."""
    runs = []
    for operator, y, seed in zip(batch.operators, batch.ys, PROBLEM_SEEDS, strict=True):
        solver = spec.build()
        state = solver.init(batch.prior, operator, y, PARTICLES, seed)
        for k in range(solver.num_steps):
            state = solver.step(state, k)
        runs.append((solver.result(state), solver.measurement_loss(state), state.generators))
    return runs


@pytest.mark.parametrize(("name", "case"), _runnable_cases())
def test_a_batch_of_problems_equals_the_separate_runs(name: str, case: str) -> None:
    """3 problems x 2 particles in one batch give, row for row, the samples, losses and random
    streams of the 3 runs of one problem each (to round-off: BATCH_TOLERANCE)."""
    spec, batch = _problem_batch(name, case)
    separate = _separate(spec, batch)
    solver = spec.build()
    state = _batched_init(solver, batch)
    for k in range(solver.num_steps):
        state = solver.step(state, k)
    assert state.status.tolist() == [0] * PROBLEMS * PARTICLES
    samples = torch.cat([samples for samples, _, _ in separate])
    losses = torch.cat([loss for _, loss, _ in separate])
    torch.testing.assert_close(solver.result(state), samples, **BATCH_TOLERANCE)
    torch.testing.assert_close(solver.measurement_loss(state), losses, **BATCH_TOLERANCE)
    streams = [g.get_state() for _, _, gens in separate for g in gens]
    for generator, stream in zip(state.generators, streams, strict=True):
        assert torch.equal(generator.get_state(), stream)


@pytest.mark.parametrize("name", solvers.available())
def test_select_and_pruning_keep_each_rows_problem(name: str) -> None:
    """Rows chosen from a batch of problems (with repeats, then one of them pruned) continue
    with their own y and operator, exactly as in the full batch."""
    spec, batch = _problem_batch(name, _stacked_case(name))
    solver = spec.build()
    state = _batched_init(solver, batch)
    half = solver.num_steps // 2
    for k in range(half):
        state = solver.step(state, k)
    chosen = state.select([5, 0, 3, 0])
    chosen.status = chosen.status.clone()
    chosen.status[1] = STATUS_PRUNED
    frozen = chosen.x0[1].clone()
    for k in range(half, solver.num_steps):
        state = solver.step(state, k)
        chosen = solver.step(chosen, k)
    full, picked = solver.result(state), solver.result(chosen)
    torch.testing.assert_close(picked[[0, 2, 3]], full[[5, 3, 0]], **BATCH_TOLERANCE)
    assert torch.equal(chosen.x0[1], frozen)
    loss = solver.measurement_loss(chosen)
    torch.testing.assert_close(loss[[0, 2, 3]], solver.measurement_loss(state)[[5, 3, 0]])
    assert loss[1] == float("inf")


@pytest.mark.parametrize("name", solvers.available())
def test_batch_inputs_are_checked_with_the_fix(name: str) -> None:
    spec, batch = _problem_batch(name, _stacked_case(name))
    solver, prior = spec.build(), batch.prior
    stacked = operators.stack_rows(batch.operators, PARTICLES)
    rows = PROBLEMS * PARTICLES
    y = torch.cat([y.expand(PARTICLES, *y.shape[1:]) for y in batch.ys])
    with pytest.raises(SolverInputError, match=f"y holds 2 measurements for {rows} rows"):
        solver.init(prior, stacked, y[:2], rows)
    with pytest.raises(SolverInputError, match=f"seed lists 4 seeds for {rows} rows"):
        solver.init(prior, stacked, y, rows, seed=[1, 2, 3, 4])
    with pytest.raises(SolverInputError, match="seed must be an int"):
        solver.init(prior, stacked, y, rows, seed="7")
    with pytest.raises(SolverInputError, match=f"serves {rows} rows .* init starts 4"):
        solver.init(prior, stacked, y[:4], 4)
