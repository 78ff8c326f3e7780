"""The ensemble GMM benchmark: mode coverage by hand, one tiny variant run, orientation check."""

from __future__ import annotations

import math

import pytest
import torch

from ensemble import Repulsion
from experiments.benchmarks.ensemble_gmm import (
    Variant,
    assign_modes,
    mode_coverage,
    right_orientation,
    run_ensembles,
    score_variant,
)
from experiments.gmm_protocol import ExactInstance
from solvers.priors.gmm import GaussianMixturePosterior

F64 = torch.float64


def _posterior() -> GaussianMixturePosterior:
    """Three modes on a line, weights 0.6 / 0.395 / 0.005, a covariance squeezed along x."""
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=F64)
    weights = torch.tensor([0.6, 0.395, 0.005], dtype=F64)
    return GaussianMixturePosterior(
        means, weights, torch.diag(torch.tensor([0.01, 4.0], dtype=F64))
    )


def test_particles_on_known_modes_give_the_known_coverage() -> None:
    posterior = _posterior()
    on_first_and_third = torch.tensor([[0.1, 0.5], [-0.1, -1.0], [0.0, 9.0]], dtype=F64)
    assert assign_modes(on_first_and_third, posterior).tolist() == [0, 0, 2]
    figures = mode_coverage(on_first_and_third, posterior)
    assert figures["coverage"] == pytest.approx(0.605)
    assert (figures["hit"], figures["modes"]) == (1.0, 2.0)  # only 0.6 and 0.395 exceed 1%
    # shares (2/3, 0, 1/3) against (0.6, 0.395, 0.005): TV = (0.0667 + 0.395 + 0.3283) / 2
    assert figures["tv"] == pytest.approx(0.395)
    everywhere = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=F64)
    assert mode_coverage(everywhere, posterior)["coverage"] == pytest.approx(1.0)


def test_assignment_uses_the_posterior_metric() -> None:
    means = torch.tensor([[0.0, 0.0], [1.0, 6.0]], dtype=F64)
    covariance = torch.diag(torch.tensor([0.01, 4.0], dtype=F64))  # std 0.1 along x, 2 along y
    posterior = GaussianMixturePosterior(means, torch.tensor([0.5, 0.5], dtype=F64), covariance)
    point = torch.tensor([[1.0, 0.0]], dtype=F64)
    assert torch.cdist(point, means).argmin().item() == 0  # Euclid: 1 vs 6
    assert assign_modes(point, posterior).tolist() == [1]  # 10 vs 3 standard deviations


def test_a_tiny_variant_run_gives_a_finite_sliced_wasserstein() -> None:
    exact = ExactInstance.mcgdiff(8, 1, 0)
    variant = Variant("repulsion", Repulsion(weight=0.1))
    results = run_ensembles(exact.problem, variant, particles=4, seeds=[0, 1], steps=5)
    ensembles = [r.all_samples for r in results]
    assert [tuple(e.shape) for e in ensembles] == [(4, 8), (4, 8)]
    reference = exact.reference(8)
    score = score_variant(ensembles, exact, reference)
    assert math.isfinite(score["sw"]) and score["sw"] > 0
    assert 0 < score["coverage"] <= 1 and 0 <= score["tv"] <= 1


def test_orientation_is_decided_by_the_nearer_of_truth_and_its_rotation() -> None:
    truth = torch.zeros(1, 1, 4, 4)
    truth[..., 0, :2] = 1.0  # a bar in the top-left corner
    rotated = torch.rot90(truth, 2, dims=(-2, -1))
    samples = torch.cat([truth + 0.1, rotated, 0.7 * truth + 0.3 * rotated])
    assert right_orientation(samples, truth).tolist() == [True, False, True]
