"""Several problems in one ensemble run: every interaction stays within a problem, and each
problem's particles match its own single-problem run (issue: many images in one batch)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import ensemble
import operators
from ensemble import EnsembleSpecError, OperatorSpec, Pruning, Repulsion, Steering
from solvers.priors.gmm import default_gmm_prior
from tests.ensemble_specs import flat_spec

SEEDS = (11, 12, 13)
OVERRIDES = {"annealing_steps": 10, "mcmc_steps": 4}
# float64 throughout: a batch of rows differs from its sub-batches by round-off only
TOLERANCE = {"rtol": 1e-9, "atol": 1e-9}


def _problems(shared: bool) -> tuple[list[operators.Operator], list[torch.Tensor]]:
    """Three measurements of a d = 8 Gaussian mixture: one shared 2 x 8 operator, or one each."""
    prior = default_gmm_prior(8)
    ops, ys = [], []
    for p in range(3):
        gen = torch.Generator().manual_seed(100 + (0 if shared else p))
        A = torch.randn(2, 8, generator=gen, dtype=torch.float64)
        ops.append(operators.build("matrix", A=A, sigma=0.5))
        x = prior.sample(1, torch.Generator().manual_seed(200 + p))
        ys.append(ops[-1].measure(x, torch.Generator().manual_seed(300 + p)))
    return ops, ys


def _spec(operator: Any, y: torch.Tensor, seed: Any, **settings: Any):
    return flat_spec(
        solver="daps",
        preset="gmm/pixel_hmc",
        overrides=OVERRIDES,
        prior={"name": "gmm", "d": 8},
        operator=operator,
        y=y,
        seed=seed,
        particles=4,
        progress=False,
        **settings,
    )


INTERACTIONS = {
    "independent": {},
    "pruning": {"pruning": Pruning(steps=(4,), keep=(2,))},
    "pruning, no refill": {"pruning": Pruning(steps=(4,), keep=(1,), refill=False)},
    "steering": {"steering": Steering(enabled=True, ess_threshold=0.9)},
    "repulsion": {"repulsion": Repulsion(weight=2.0), "selection": "best", "select_k": 2},
}


@pytest.mark.parametrize("shared", [True, False], ids=["shared operator", "own operators"])
@pytest.mark.parametrize("interaction", list(INTERACTIONS))
def test_each_problem_of_a_batch_is_its_own_run(shared: bool, interaction: str) -> None:
    ops, ys = _problems(shared)
    settings = INTERACTIONS[interaction]
    operator = OperatorSpec.of(ops[0]) if shared else tuple(OperatorSpec.of(o) for o in ops)
    batch = ensemble.run_all(_spec(operator, torch.cat(ys), SEEDS, **settings))
    assert len(batch) == 3
    for p, result in enumerate(batch):
        alone = ensemble.run(_spec(OperatorSpec.of(ops[p]), ys[p], SEEDS[p], **settings))
        torch.testing.assert_close(result.all_samples, alone.all_samples, **TOLERANCE)
        torch.testing.assert_close(result.samples, alone.samples, **TOLERANCE)
        assert result.status == alone.status and result.selected == alone.selected
        assert result.origin == alone.origin and set(result.origin) <= set(range(4))
        assert result.traces["alive"] == alone.traces["alive"]
        assert result.traces["moves"] == alone.traces["moves"]
        for key in ("loss_best", "ess"):
            got, want = result.traces[key], alone.traces[key]
            assert [g is None for g in got] == [w is None for w in want]
            torch.testing.assert_close(
                torch.tensor([g for g in got if g is not None], dtype=torch.float64),
                torch.tensor([w for w in want if w is not None], dtype=torch.float64),
                rtol=1e-8,
                atol=1e-8,
            )
    if interaction != "independent":  # the problems really differ, so mixing would show
        assert not torch.allclose(batch[0].all_samples, batch[1].all_samples)


def test_a_multi_problem_spec_checks_its_shapes() -> None:
    ops, ys = _problems(shared=False)
    with pytest.raises(EnsembleSpecError, match=r"y has 2 measurement\(s\) .* for 3 problems"):
        _spec(OperatorSpec.of(ops[0]), torch.cat(ys[:2]), SEEDS)
    with pytest.raises(EnsembleSpecError, match="operator lists 2 OperatorSpecs for 3 problem"):
        _spec(tuple(OperatorSpec.of(o) for o in ops[:2]), torch.cat(ys), SEEDS)
    with pytest.raises(EnsembleSpecError, match=r"workers = 13 exceeds the 12 rows"):
        _spec(OperatorSpec.of(ops[0]), torch.cat(ys), SEEDS, workers=13)
    with pytest.raises(ValueError, match="holds 3 problems; use run_all"):
        ensemble.run(_spec(OperatorSpec.of(ops[0]), torch.cat(ys), SEEDS))


@pytest.mark.ray
def test_ray_workers_holding_rows_of_several_problems(ray_session) -> None:
    ops, ys = _problems(shared=False)
    operator = tuple(OperatorSpec.of(o) for o in ops)
    settings = INTERACTIONS["steering"]
    local = ensemble.run_all(_spec(operator, torch.cat(ys), SEEDS, **settings))
    # 12 rows over 3 workers of 5, 4 and 3 rows: each worker holds rows of two problems
    spec = _spec(
        operator,
        torch.cat(ys),
        SEEDS,
        backend="ray",
        workers=3,
        partition=(5, 4, 3),
        cpus_per_worker=0.5,
        **settings,
    )
    try:
        remote = ensemble.run_all(spec)
    finally:
        ensemble.release_workers()  # other tests count the parked workers
    for a, b in zip(local, remote, strict=True):
        torch.testing.assert_close(b.all_samples, a.all_samples, **TOLERANCE)
        assert a.origin == b.origin
