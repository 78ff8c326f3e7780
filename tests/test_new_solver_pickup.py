"""Adding a solver takes one module: a solver defined and registered here, and nowhere else, is
picked up by ``solvers.available()``, the contract tests, the overhead benchmark and the GMM
benchmark from its registration and its presets."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch

import solvers
from experiments.benchmarks import gmm as gmm_bench
from experiments.benchmarks import solver_overhead as overhead
from solvers import Preset, SolverSpec
from solvers.base import Rows, Solver, State, Update, particle_randn
from solvers.config import SolverConfig, hyper
from solvers.priors.gmm import mcgdiff_problem
from solvers.priors.ode import karras_sigmas
from solvers.registry import unregister
from tests import test_solver_contract as contract

NAME = "prior_euler"


@dataclass(frozen=True)
class PriorEulerConfig(SolverConfig):
    """A few Euler steps of the probability-flow ODE (Karras et al. 2022, Algorithm 1 without
    the Heun correction) on the poly-7 grid."""

    steps: int = hyper(8, 1, 1000, source="test solver")
    sigma_max: float = hyper(20.0, 1e-2, 1e4, log=True, source="test solver")
    sigma_min: float = hyper(0.01, 1e-4, 10.0, log=True, source="test solver")


class PriorEuler(Solver):
    """Prior-only sampler: ignores y; ``force`` is an extra drift, (s^2 - s'^2) force per step."""

    name = NAME
    config_class = PriorEulerConfig

    @property
    def num_steps(self) -> int:
        return self.config.steps

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        assert self.prior is not None
        return self.prior.decode(x) if self.prior.is_latent else x

    def _init(
        self, generators: list[torch.Generator], indices: list[int], y: torch.Tensor
    ) -> State:
        prior, operator = self.prior, self.operator
        assert prior is not None and operator is not None
        hi = min(self.config.sigma_max, prior.sigma_max)
        lo = max(self.config.sigma_min, prior.sigma_min)
        self.sigmas = karras_sigmas(self.config.steps, lo, hi)
        like = torch.empty(len(indices), *prior.shape, dtype=prior.dtype, device=prior.device)
        x = self.sigmas[0] * particle_randn(generators, like)
        return State(
            x=x,
            x0=x.new_zeros((len(indices), *operator.input_shape)),
            generators=generators,
            indices=indices,
            status=torch.zeros(len(indices), dtype=torch.long),
            y=y.to(x),
        )

    def _update(self, rows: Rows, k: int) -> Update:
        assert self.prior is not None
        s, s_next = self.sigmas[k], self.sigmas[k + 1]
        with torch.no_grad():
            denoised = self.prior.denoise(rows.x, s)
            x_next = rows.x + (s_next - s) * (rows.x - denoised) / s
            if rows.force is not None:
                x_next = x_next + (s**2 - s_next**2) * rows.force.to(x_next)
            x0 = self._image(x_next if s_next == 0 else denoised)
        return Update(x_next, x0)


PRESETS = {
    "gmm": Preset(
        overrides={"steps": 20, "sigma_max": 50.0},
        task=gmm_bench.GMM_TASK,
        source="test solver: a short run from above the mixture's spread",
    )
}


@pytest.fixture
def registered() -> Iterator[type[Solver]]:
    """Register the test solver with the registry's decorator for one test only."""
    solver = solvers.register(presets=PRESETS)(PriorEuler)
    try:
        yield solver
    finally:
        unregister(NAME)
    assert NAME not in solvers.available()


def test_it_is_registered_with_its_presets(registered: type[Solver]) -> None:
    assert NAME in solvers.available() and solvers.solver_class(NAME) is registered
    assert solvers.presets(NAME) == PRESETS
    assert solvers.backbones(NAME, "gmm") == ("pixel", "latent")
    assert SolverSpec(NAME, "gmm").build().config.steps == 20


def test_it_passes_the_contract(registered: type[Solver]) -> None:
    assert contract.contract_spec(NAME) == SolverSpec(NAME, "gmm")
    checks = [
        contract.test_stepping_by_hand_equals_sample_and_counts_nfe,
        contract.test_a_seed_fixes_the_samples,
        contract.test_particles_do_not_depend_on_their_batch,
        contract.test_select_continues_the_chosen_particles_exactly,
        contract.test_force_is_an_extra_drift_of_the_state_shape,
        contract.test_bad_measurements_are_refused_with_the_fix,
        contract.test_a_prior_of_the_wrong_kind_is_refused,
        contract.test_pruned_and_stopped_particles_cost_nothing,
    ]
    for check in checks:
        check(NAME)
    contract.test_every_preset_builds_and_fits_its_solver()
    contract.test_benchmark_presets_fit_the_benchmark()


def test_the_overhead_benchmark_has_a_case_for_it(registered: type[Solver]) -> None:
    case = next(c for c in overhead.cases() if c.spec.name == NAME)
    assert case.spec == SolverSpec(NAME) and case.prior == "digits"  # no inpainting preset
    assert overhead.select([NAME]) == [case]
    p = mcgdiff_problem(4, 2, 0)
    problem = overhead.Problem(p.prior, p.operator, p.y)
    row = overhead.measure(dataclasses.replace(case, prior="gmm"), problem, 2, 1, 1)
    assert (
        row.nfe == PriorEulerConfig().steps == row.calls[overhead.CallKey("denoise", (2, 4), False)]
    )


def test_the_gmm_benchmark_runs_its_gmm_preset(registered: type[Solver]) -> None:
    entries = [e for e in gmm_bench.select_entries(None) if e.spec.name == NAME]
    assert [(e.label, e.bed) for e in entries] == [
        (f"{NAME} gmm", "pixel"),
        (f"{NAME} gmm", "latent"),
    ]
    assert entries[0].settings() == {"steps": 20, "sigma_max": 50.0}
    tiny = gmm_bench.Protocol(dims=(8,), dys=(2,), instances=1, samples=200, slices=50)
    rows = [r for r in gmm_bench.run(entries[:1], tiny) if r["solver"] == NAME]
    assert len(rows) == 1 and rows[0]["nfe"] == 20 and rows[0]["stopped"] == 0
    assert math.isfinite(rows[0]["sw"]) and rows[0]["ratio"] > 1.0
