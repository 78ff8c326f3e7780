"""The ensemble side of weighted solvers: accumulated importance weights, ESS-triggered
systematic resampling per problem, weighted final selection (docs/ensemble.md), checked on a
toy weighted solver whose increments are known functions of the particles."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import ensemble
import operators
from ensemble import SMC, EnsembleSpecError, OperatorSpec, Pruning
from ensemble.interaction import effective_sample_size, systematic_resample
from solvers import SolverSpec
from solvers.base import LOG_WEIGHT, Rows, Solver, State, Update, particle_randn
from solvers.config import SolverConfig, hyper
from solvers.registry import register, unregister
from tests.ensemble_specs import flat_spec

NAME = "toy_weighted_walk"


@dataclass(frozen=True)
class WalkConfig(SolverConfig):
    steps: int = hyper(5, 1, 100, source="test solver")


class WeightedWalk(Solver):
    """x_0 ~ N(0, I); x_{k+1} = x_k + 0.5 xi; log-weight increments -y_0 x[0]^2 (init: -y_0
    |x|^2 / 2): a measurement y with y_0 = 0 gives equal weights, a large y_0 degenerate ones."""

    name = NAME
    config_class = WalkConfig
    weighted = True

    @property
    def num_steps(self) -> int:
        return self.config.steps

    def _init(
        self, generators: list[torch.Generator], indices: list[int], y: torch.Tensor
    ) -> State:
        assert self.prior is not None
        like = torch.empty(len(indices), *self.prior.shape, dtype=torch.float64)
        x = particle_randn(generators, like)
        y = y.to(torch.float64)
        scale = y[:, 0] if y.shape[0] == len(indices) else y[0, 0].expand(len(indices))
        return State(
            x=x,
            x0=x.clone(),
            generators=generators,
            indices=indices,
            status=torch.zeros(len(indices), dtype=torch.long),
            extra={LOG_WEIGHT: -scale * x.pow(2).sum(1) / 2},
            y=y,
        )

    def _update(self, rows: Rows, k: int) -> Update:
        x = rows.x + 0.5 * particle_randn(rows.generators, rows.x)
        scale = rows.y[:, 0] if rows.y.shape[0] == x.shape[0] else rows.y[0, 0]
        return Update(x, x.clone(), log_weight=-scale * x[:, 0] ** 2)


@pytest.fixture(scope="module", autouse=True)
def toy_solver() -> Iterator[None]:
    register()(WeightedWalk)
    yield
    unregister(NAME)


def _spec(y: torch.Tensor, seed: Any = 5, **settings: Any) -> ensemble.EnsembleSpec:
    operator = operators.build("matrix", A=torch.eye(2, dtype=torch.float64), sigma=0.1)
    base = {"particles": 8, "progress": False, "smc": SMC(ess_threshold=0.0)}
    return flat_spec(
        solver=NAME,
        prior={"name": "gmm", "d": 2},
        operator=OperatorSpec.of(operator),
        y=y,
        seed=seed,
        **{**base, **settings},
    )


Y_SHARP = torch.tensor([[3.0, 0.0]], dtype=torch.float64)
Y_FLAT = torch.tensor([[0.0, 0.0]], dtype=torch.float64)


def test_without_resampling_the_weights_are_the_summed_increments() -> None:
    result = ensemble.run(_spec(Y_SHARP))
    direct = WeightedWalk().sample(_prior(), _op(), Y_SHARP, n=8, seed=5)
    assert direct.log_weights is not None and result.log_weights is not None
    expected = direct.log_weights - torch.logsumexp(direct.log_weights, 0)
    torch.testing.assert_close(result.log_weights, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(result.all_samples, direct.samples)
    assert sum(result.traces["moves"]) == 0
    # the ESS trace follows the weights accumulated before each step
    assert result.traces["ess"][-1] < result.traces["ess"][0] <= 8


def _prior() -> Any:
    from solvers.priors.loading import load

    return load({"name": "gmm", "d": 2})


def _op() -> operators.Operator:
    return operators.build("matrix", A=torch.eye(2, dtype=torch.float64), sigma=0.1)


def _replay(y: torch.Tensor, seed: int, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """An independent re-implementation of the driver's SMC loop for one problem: (final
    samples, final normalised log-weights) with the same uniforms."""
    from ensemble.group import copy_seed
    from ensemble.interaction import place_copies
    from ensemble.run import _uniform

    solver = WeightedWalk()
    state = solver.init(_prior(), _op(), y, n=8, seed=seed)
    log_w = torch.zeros(8, dtype=torch.float64)
    for k in range(solver.num_steps):
        log_w = log_w + solver.log_weight(state)
        if effective_sample_size(log_w) < threshold * 8:
            ancestors = place_copies(systematic_resample(log_w, _uniform(seed, k)))
            moved = [i for i in range(8) if int(ancestors[i]) != i]
            state = state.select(ancestors)
            state.reseed(moved, [copy_seed(seed, i, k) for i in moved])
            log_w = torch.zeros(8, dtype=torch.float64)
        state = solver.step(state, k)
    log_w = log_w + solver.log_weight(state)
    return state.x0, log_w - torch.logsumexp(log_w, 0)


def test_resampling_matches_an_independent_replay_of_the_smc_loop() -> None:
    result = ensemble.run(_spec(Y_SHARP, smc=SMC(ess_threshold=0.5)))
    samples, log_w = _replay(Y_SHARP, 5, 0.5)
    assert sum(result.traces["moves"]) > 0  # degenerate weights: it did resample
    torch.testing.assert_close(result.all_samples, samples, rtol=0, atol=0)
    torch.testing.assert_close(result.log_weights, log_w, rtol=1e-12, atol=1e-12)


def test_ess_and_resampling_act_per_problem() -> None:
    y = torch.cat([Y_SHARP, Y_FLAT])
    both = ensemble.run_all(_spec(y, seed=(5, 6), smc=SMC(ess_threshold=0.5), workers=3))
    sharp = ensemble.run(_spec(Y_SHARP, seed=5, smc=SMC(ess_threshold=0.5)))
    flat = ensemble.run(_spec(Y_FLAT, seed=6, smc=SMC(ess_threshold=0.5)))
    assert sum(both[0].traces["moves"]) > 0 and sum(both[1].traces["moves"]) == 0
    assert both[1].traces["ess"] == [pytest.approx(8.0)] * 5  # equal weights throughout
    for batched, alone in ((both[0], sharp), (both[1], flat)):
        torch.testing.assert_close(batched.all_samples, alone.all_samples, rtol=0, atol=0)
        torch.testing.assert_close(batched.log_weights, alone.log_weights, rtol=1e-12, atol=0)
        assert batched.origin == alone.origin


def test_weighted_and_heaviest_selections() -> None:
    heaviest = ensemble.run(_spec(Y_SHARP, selection="heaviest", select_k=2))
    assert heaviest.log_weights is not None
    assert heaviest.selected == torch.argsort(heaviest.log_weights, descending=True)[:2].tolist()
    resampled = ensemble.run(_spec(Y_SHARP, selection="weighted"))
    assert len(resampled.selected) == 8
    assert torch.equal(resampled.samples, resampled.all_samples[resampled.selected])
    # systematic resampling: particle i appears floor(8 w_i) or ceil(8 w_i) times
    counts = torch.bincount(torch.tensor(resampled.selected), minlength=8).double()
    expected = 8 * resampled.log_weights.exp()
    assert bool(((counts - expected).abs() < 1).all())


def test_a_weighted_run_resumes_from_its_checkpoint_with_the_same_result(tmp_path: Path) -> None:
    settings = {"smc": SMC(ess_threshold=0.5), "checkpoint_every": 2}
    undisturbed = ensemble.run(_spec(Y_SHARP, **settings))
    spec = _spec(Y_SHARP, checkpoint_dir=str(tmp_path), **settings)

    def stop(k: int, _: ensemble.Ensemble) -> None:
        if k == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensemble.Ensemble(spec).run(callback=stop)
    resumed = ensemble.run(spec, resume=True)
    assert torch.equal(resumed.all_samples, undisturbed.all_samples)
    assert torch.equal(resumed.log_weights, undisturbed.log_weights)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"pruning": Pruning(steps=(1,), keep=(2,))}, "pruning by loss"),
        ({"selection": "weighted", "solver": "dps"}, "needs a weighted solver"),
    ],
)
def test_settings_that_contradict_the_weights_are_refused(
    settings: dict[str, Any], match: str
) -> None:
    solver = settings.pop("solver", None)
    spec = _spec(Y_SHARP, **settings)
    if solver is not None:
        spec = spec.replace(solver=SolverSpec(solver, "gmm"))
    with pytest.raises(EnsembleSpecError, match=match):
        ensemble.Ensemble(spec)


def test_tds_in_an_ensemble_counts_the_solvers_own_calls() -> None:
    """The initial twist call of ``init`` is counted once (it was counted twice before)."""
    from solvers.priors.gmm import mcgdiff_problem

    problem = mcgdiff_problem(8, 2, 0)
    spec = flat_spec(
        solver="tds",
        preset="gmm",
        overrides={"num_steps": 8},
        prior={"name": "gmm", "d": 8},
        operator=OperatorSpec.of(problem.operator),
        y=problem.y,
        seed=2,
        particles=4,
        progress=False,
        smc=SMC(ess_threshold=0.0),
    )
    result = ensemble.run(spec)
    direct = SolverSpec("tds", "gmm", {"num_steps": 8}).build()
    alone = direct.sample(problem.prior, problem.operator, problem.y, n=4, seed=2)
    assert result.nfe == alone.nfe == 8
    torch.testing.assert_close(result.all_samples, alone.samples, rtol=0, atol=0)
    assert alone.log_weights is not None and result.log_weights is not None
    expected = alone.log_weights - torch.logsumexp(alone.log_weights, 0)
    torch.testing.assert_close(result.log_weights, expected, rtol=1e-12, atol=1e-12)
