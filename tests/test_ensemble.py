"""Ensembles in one process: same results as the solver, any partition, interaction, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import ensemble
import operators
import solvers
from ensemble import EnsembleSpec, EnsembleSpecError, OperatorSpec, Pruning, Repulsion, Steering
from ensemble.features import FeatureMap
from solvers.priors.gmm import mcgdiff_problem
from tests.ensemble_specs import flat_spec, gmm_daps_spec

OVERRIDES = {"annealing_steps": 10, "mcmc_steps": 4}


@pytest.fixture(scope="module")
def problem():
    return mcgdiff_problem(8, 1, 0)


def _spec(problem, **changes: Any) -> EnsembleSpec:
    return gmm_daps_spec(problem, **changes)


def test_without_interaction_it_is_the_solvers_own_sample(problem) -> None:
    result = ensemble.run(_spec(problem))
    solver = solvers.build("daps", "gmm/pixel_hmc", **OVERRIDES)
    direct = solver.sample(problem.prior, problem.operator, problem.y, n=6, seed=3)
    assert torch.equal(result.all_samples, direct.samples)
    assert result.nfe == direct.nfe
    assert result.status == ["ok"] * 6 and result.selected == list(range(6))
    assert result.origin == list(range(6))


@pytest.mark.parametrize(
    "interaction",
    [
        {"repulsion": Repulsion(weight=2.0), "features": "pixels"},
        {"steering": Steering(enabled=True, ess_threshold=0.99)},
        {"pruning": Pruning(steps=(4, 7), keep=(3, 2))},
    ],
    ids=["repulsion", "steering", "pruning"],
)
def test_any_partition_gives_the_same_samples(problem, interaction: dict[str, Any]) -> None:
    whole = ensemble.run(_spec(problem, **interaction))
    split = ensemble.run(_spec(problem, workers=3, partition=(1, 3, 2), **interaction))
    torch.testing.assert_close(split.all_samples, whole.all_samples, rtol=1e-10, atol=1e-10)
    assert split.origin == whole.origin


def test_repulsion_pushes_particles_apart(problem) -> None:
    plain = ensemble.run(_spec(problem, particles=8))
    pushed = ensemble.run(_spec(problem, particles=8, repulsion=Repulsion(weight=5.0)))
    spread = [torch.pdist(r.all_samples).mean() for r in (plain, pushed)]
    assert spread[1] > spread[0] * 1.05
    window = Repulsion(weight=5.0, sigma_min=1e6)  # never inside the noise-level window
    assert torch.equal(
        ensemble.run(_spec(problem, particles=8, repulsion=window)).all_samples, plain.all_samples
    )


def _losses_before(problem, step: int, n: int = 6) -> torch.Tensor:
    solver = solvers.build("daps", "gmm/pixel_hmc", **OVERRIDES)
    state = solver.init(problem.prior, problem.operator, problem.y, n, 3)
    for k in range(step):
        state = solver.step(state, k)
    return solver.measurement_loss(state)


def test_top_k_pruning_keeps_the_lowest_losses(problem) -> None:
    best_two = set(torch.argsort(_losses_before(problem, 5))[:2].tolist())
    refilled = ensemble.run(_spec(problem, pruning=Pruning(steps=(5,), keep=(2,))))
    assert set(refilled.origin) == best_two and refilled.traces["moves"][5] == 4
    assert refilled.status == ["ok"] * 6
    stopped = ensemble.run(
        _spec(problem, pruning=Pruning(steps=(5,), keep=(2,), refill=False), selection="best")
    )
    alive = [i for i, s in enumerate(stopped.status) if s == "ok"]
    assert set(alive) == best_two
    assert stopped.traces["alive"][5:] == [2] * 5
    assert stopped.selected == [min(alive, key=lambda i: float(stopped.loss[i]))]
    assert torch.isinf(stopped.loss[[i for i in range(6) if i not in alive]]).all()


def test_steering_resamples_when_the_ess_drops(problem) -> None:
    result = ensemble.run(_spec(problem, steering=Steering(enabled=True, ess_threshold=0.99)))
    assert sum(result.traces["moves"]) > 0
    assert result.origin != list(range(6))
    never = ensemble.run(_spec(problem, steering=Steering(enabled=True, ess_threshold=1e-9)))
    assert sum(never.traces["moves"]) == 0
    assert torch.equal(never.all_samples, ensemble.run(_spec(problem)).all_samples)


def test_best_selection_takes_the_lowest_measurement_loss(problem) -> None:
    result = ensemble.run(_spec(problem, selection="best", select_k=2))
    assert result.selected == torch.argsort(result.loss)[:2].tolist()
    assert torch.equal(result.samples, result.all_samples[result.selected])


def test_a_stopped_run_resumes_from_disk_with_the_same_samples(problem, tmp_path: Path) -> None:
    spec = _spec(
        problem, checkpoint_every=3, checkpoint_dir=str(tmp_path), steering=Steering(enabled=True)
    )
    undisturbed = ensemble.run(_spec(problem, steering=Steering(enabled=True)))

    def stop(k: int, _: ensemble.Ensemble) -> None:
        if k == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensemble.Ensemble(spec).run(callback=stop)
    seen: list[int] = []
    resumed = ensemble.Ensemble(spec).run(callback=lambda k, _: seen.append(k), resume=True)
    assert seen[0] == 7  # restarted after the checkpoint of step 6
    assert torch.equal(resumed.all_samples, undisturbed.all_samples)
    assert resumed.nfe == undisturbed.nfe  # the calls before the checkpoint count too
    with pytest.raises(ValueError, match="different run"):
        ensemble.run(spec.replace(seed=4), resume=True)


def test_pixel_features_pull_back_through_a_linear_decoder() -> None:
    latent = mcgdiff_problem(8, 2, 0, latent=True)
    solver = solvers.build("daps", "gmm/latent_hmc", **OVERRIDES)
    state = solver.init(latent.prior, latent.operator, latent.y, 3, 0)
    state = solver.step(state, 0)
    features = FeatureMap("pixels", latent.prior)
    leaf, f = features(state)
    torch.testing.assert_close(f, state.x0, rtol=1e-10, atol=1e-10)  # decode(encode(x0)) = x0
    push = torch.randn(3, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = push @ latent.prior.decoder  # J^T push for decode(z) = D z + b
    torch.testing.assert_close(features.pullback(leaf, f, push), expected)
    leaf, f = FeatureMap("latent", latent.prior)(state)
    assert torch.equal(f, state.x)


def test_dino_features_pull_back_by_the_exact_vector_jacobian_product(tmp_path: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=16,
        patch_size=8,
    )
    with torch.random.fork_rng(devices=[]):  # transformers initialises from the global RNG
        torch.manual_seed(0)
        Dinov2Model(config).save_pretrained(tmp_path, safe_serialization=True)
    prior = mcgdiff_problem(8, 2, 0).prior
    features = FeatureMap("dino", prior, str(tmp_path))
    features.network.double()
    x0 = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    state = solvers.State(
        x=x0.clone(), x0=x0, generators=[], indices=[0, 1], status=torch.zeros(2, dtype=torch.long)
    )
    leaf, f = features(state)
    assert f.shape == (2, 16)
    push = torch.randn(2, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    force = features.pullback(leaf, f, push)
    direction = torch.randn_like(x0)
    eps = 1e-6
    plus = features._dino(x0 + eps * direction)
    minus = features._dino(x0 - eps * direction)
    finite = ((plus - minus) / (2 * eps) * push).sum()
    torch.testing.assert_close((force * direction).sum(), finite, rtol=1e-6, atol=1e-8)


def test_operator_specs_rebuild_random_parts() -> None:
    mask = operators.build("inpaint_random", shape=(1, 8, 8), seed=5)
    rebuilt = OperatorSpec.of(mask).build()
    assert torch.equal(rebuilt.mask, mask.mask)
    direct = operators.operator_class("inpaint_random")(shape=(1, 8, 8), seed=5)
    with pytest.raises(EnsembleSpecError, match=r"operators\.build"):
        OperatorSpec.of(direct)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (lambda: {"backend": "slurm"}, "backend = 'slurm'; allowed"),
        (
            lambda: {"workers": 7},
            r"workers = 7 exceeds the 6 rows \(problems x particles = 1 x 6\)",
        ),
        (lambda: {"workers": 2, "partition": (2, 3)}, "partition"),
        (lambda: {"pruning": Pruning(steps=(3,), keep=(2, 1))}, "same length"),
        (lambda: {"pruning": Pruning(steps=(3,), keep=(9,))}, "survivor counts"),
        (lambda: {"features": "dino"}, "dino_model"),
        (lambda: {"repulsion": Repulsion(weight=-1.0)}, r"^weight must be a number >= 0"),
        (
            lambda: {"steering": Steering(enabled=True), "pruning": Pruning(steps=(1,), keep=(2,))},
            "not both",
        ),
        (lambda: {"y": torch.tensor([[float("nan")]])}, "finite"),
        (
            lambda: {"steering": Steering(ess_threshold=1.5)},
            r"^ess_threshold = 1\.5 must lie in \(0, 1\]",
        ),
        (lambda: {"pruning": Pruning(steps=(4, 2), keep=(2, 1))}, "increasing"),
    ],
)
def test_bad_specs_name_the_field(problem, changes: Any, match: str) -> None:
    with pytest.raises(EnsembleSpecError, match=match):
        _spec(problem, **changes())


def test_pruning_beyond_the_last_step_is_refused(problem) -> None:
    with pytest.raises(ValueError, match="beyond the solver's 10 steps"):
        ensemble.Ensemble(_spec(problem, pruning=Pruning(steps=(10,), keep=(2,))))


@pytest.mark.slow
def test_shipped_prior_ensemble_with_pixel_repulsion() -> None:
    from experiments.data import load_builtin_split

    op = operators.build("inpaint_random", shape=(1, 32, 32), seed=0)
    image = load_builtin_split("digits", "test").images[:1]
    y = op.measure(image, torch.Generator().manual_seed(0))
    spec = flat_spec(
        solver="daps",
        preset="pixel_ula/inpaint_random",
        overrides={"annealing_steps": 3, "mcmc_steps": 2, "sigma_max": 20.0},
        prior="digits",
        operator=OperatorSpec.of(op),
        y=y,
        particles=3,
        repulsion=Repulsion(weight=100.0),  # RLSD used 25-150
        progress=False,
    )
    whole = ensemble.run(spec)
    split = ensemble.run(spec.with_settings(workers=2))
    plain = ensemble.run(spec.with_settings(repulsion=Repulsion()))
    direct = spec.solver.build().sample(solvers.priors.loading.load("digits"), op, y, n=3, seed=0)
    assert whole.status == ["ok"] * 3 and whole.nfe == direct.nfe
    assert torch.equal(plain.all_samples, direct.samples)
    assert (whole.all_samples - plain.all_samples).abs().amax() > 1e-4  # repulsion acted
    torch.testing.assert_close(split.all_samples, whole.all_samples, rtol=1e-4, atol=1e-4)


def test_progress_bar_shows_steps_particles_alive_and_best_loss(problem, capsys) -> None:
    ensemble.run(
        _spec(problem, progress=True, pruning=Pruning(steps=(5,), keep=(2,), refill=False))
    )
    err = capsys.readouterr().err
    assert "daps x6 (local)" in err and "10/10" in err
    assert "alive=2" in err and "best=" in err


def test_row_moves_index_each_tensor_on_its_own_device() -> None:
    from ensemble.group import _put, _take

    status = torch.tensor([0, 1, 0, 2])
    x = torch.arange(8.0).view(4, 2)
    assert torch.equal(_take(status, [3, 0]), torch.tensor([2, 0]))
    assert torch.equal(_take(x, [1]), torch.tensor([[2.0, 3.0]]))
    moved = _put(x, [0, 2], torch.tensor([[9.0, 9.0], [7.0, 7.0]], dtype=torch.float64))
    assert moved.dtype == x.dtype and torch.equal(
        moved[[0, 2]], torch.tensor([[9.0, 9.0], [7.0, 7.0]])
    )
    assert torch.equal(x[0], torch.tensor([0.0, 1.0]))  # the original is left as it was


def _lookahead_before(problem, step: int, n: int = 6) -> torch.Tensor:
    """Independent: the loss of x0_hat = the DAPS ODE solve from sigma_step of the state."""
    solver = solvers.build("daps", "gmm/pixel_hmc", **OVERRIDES)
    state = solver.init(problem.prior, problem.operator, problem.y, n, 3)
    for k in range(step):
        state = solver.step(state, k)
    x0hat = solver._ode(state.x, solver.sigmas[step])
    return problem.operator.loss(x0hat, problem.y).double()


def test_lookahead_pruning_keeps_the_lowest_denoised_losses(problem) -> None:
    ahead = _lookahead_before(problem, 5)
    best_two = set(torch.argsort(ahead)[:2].tolist())
    assert best_two != set(torch.argsort(_losses_before(problem, 5))[:2].tolist())
    pruned = ensemble.run(
        _spec(problem, pruning=Pruning(steps=(5,), keep=(2,), rank_by="lookahead"))
    )
    assert set(pruned.origin) == best_two


def test_rank_diagnostics_record_both_losses_without_changing_the_samples(problem) -> None:
    from scipy.stats import spearmanr

    plain = ensemble.run(_spec(problem))
    watched = ensemble.run(_spec(problem, pruning=Pruning(diagnostics=True)))
    assert torch.equal(watched.all_samples, plain.all_samples)
    traces = watched.traces
    torch.testing.assert_close(
        torch.tensor(traces["particle_loss"][5], dtype=torch.float64),
        _losses_before(problem, 5).double(),
    )
    torch.testing.assert_close(
        torch.tensor(traces["particle_lookahead_loss"][5], dtype=torch.float64),
        _lookahead_before(problem, 5),
    )
    for kind, key in (("estimate", "particle_loss"), ("lookahead", "particle_lookahead_loss")):
        expected = spearmanr(traces[key][7], watched.loss.tolist()).statistic
        assert traces[f"rank_corr_{kind}"][7] == pytest.approx(expected, abs=1e-12)
    assert watched.nfe > plain.nfe  # the lookahead calls are counted
