"""Repulsion kernels, pruning and SMC weights against hand computations (docs/ensemble.md)."""

from __future__ import annotations

import math

import pytest
import torch

from ensemble.interaction import (
    effective_sample_size,
    place_copies,
    rbf_repulsion,
    smc_log_potential,
    systematic_resample,
    top_k_ancestors,
)


def _repulsion_by_loops(points: list[list[float]], svgd: bool = False) -> list[list[float]]:
    """The RBF push written out with Python floats, one particle at a time."""
    n = len(points)
    out = []
    for i in range(n):
        dists = [math.dist(points[i], points[j]) for j in range(n) if j != i]
        dists.sort()
        m = len(dists)
        median = dists[m // 2] if m % 2 else (dists[m // 2 - 1] + dists[m // 2]) / 2
        h = median**2 / math.log(n - 1 if n > 2 else 2)
        push = [0.0] * len(points[i])
        total = 1.0
        for j in range(n):
            if j == i:
                continue
            k = math.exp(-(math.dist(points[i], points[j]) ** 2) / h)
            total += k
            for c in range(len(push)):
                push[c] += 2 * k * (points[i][c] - points[j][c]) / h
        out.append([p / total for p in push] if svgd else push)
    return out


def test_two_particles_push_apart_by_the_closed_form() -> None:
    push = rbf_repulsion(torch.tensor([[0.0], [2.0]]))
    # d = 2, h = 4 / log 2, k = 1/2: g_0 = 2 * 1/2 * (0 - 2) / h = -log(2) / 2
    torch.testing.assert_close(push, torch.tensor([[-math.log(2) / 2], [math.log(2) / 2]]).double())


@pytest.mark.parametrize("svgd", [False, True])
@pytest.mark.parametrize("n", [3, 4, 6])
def test_push_equals_the_formula_written_out(n: int, svgd: bool) -> None:
    points = torch.randn(n, 3, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    expected = torch.tensor(_repulsion_by_loops(points.tolist(), svgd), dtype=torch.float64)
    torch.testing.assert_close(rbf_repulsion(points, svgd), expected, rtol=1e-12, atol=1e-12)


def test_push_points_away_from_the_others_and_sums_to_zero_for_two() -> None:
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    push = rbf_repulsion(points)
    centre = points.mean(0)
    assert ((push * (points - centre)).sum(1) > 0).all()
    assert torch.equal(rbf_repulsion(torch.zeros(3, 2)), torch.zeros(3, 2, dtype=torch.float64))
    assert torch.equal(rbf_repulsion(torch.ones(1, 4)), torch.zeros(1, 4, dtype=torch.float64))


def test_top_k_keeps_the_lowest_losses_and_refills_in_rank_order() -> None:
    loss = torch.tensor([5.0, 1.0, 4.0, 0.5, 3.0])
    ancestors, kept = top_k_ancestors(loss, 2, refill=True)
    assert ancestors.tolist() == [3, 1, 1, 3, 3]  # survivors 3 (best) and 1 stay; freed 0, 2, 4
    assert kept.all()
    ancestors, kept = top_k_ancestors(loss, 2, refill=False)
    assert ancestors.tolist() == [0, 1, 2, 3, 4]
    assert kept.tolist() == [False, True, False, True, False]


def test_copies_go_to_freed_slots_and_survivors_stay() -> None:
    placed = place_copies(torch.tensor([0, 0, 0, 2, 3]))
    assert placed.tolist() == [0, 0, 2, 3, 0]
    assert sorted(placed.tolist()) == [0, 0, 0, 2, 3]
    assert place_copies(torch.arange(4)).tolist() == [0, 1, 2, 3]


def test_systematic_resampling_by_hand() -> None:
    log_w = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    # positions (0.6 + i) / 3 = 0.2, 0.533, 0.867 against the cumulative weights 0.5, 0.75, 1
    assert systematic_resample(log_w, 0.6).tolist() == [0, 1, 2]
    # u = 0.3: 0.1, 0.433, 0.767 -> the first two fall below 0.5
    assert systematic_resample(log_w, 0.3).tolist() == [0, 0, 2]
    assert systematic_resample(torch.log(torch.tensor([0.8, 0.1, 0.1])), 0.1).tolist() == [0, 0, 0]
    w = torch.tensor([0.1, 0.45, 0.2, 0.25])
    for u in torch.linspace(0, 0.999, 17).tolist():
        counts = torch.bincount(systematic_resample(w.log(), u), minlength=4)
        # each particle is copied floor(N w_i) or ceil(N w_i) times
        assert (counts >= torch.floor(4 * w)).all() and (counts <= torch.ceil(4 * w)).all()


def test_effective_sample_size_and_potentials() -> None:
    assert effective_sample_size(torch.zeros(5)) == pytest.approx(5.0)
    assert effective_sample_size(torch.tensor([0.0, -1e9, -1e9])) == pytest.approx(1.0)
    w = torch.tensor([0.5, 0.3, 0.2])
    assert effective_sample_size(w.log()) == pytest.approx(1 / float((w**2).sum()))
    phi = smc_log_potential(torch.tensor([2.0, 8.0]), sigma_y=0.1, noise_level=1.0, temperature=0.5)
    torch.testing.assert_close(phi, torch.tensor([-0.5, -2.0], dtype=torch.float64) / 1.01)


def test_spearman_matches_scipy_with_ties_and_is_nan_for_constant_input() -> None:
    from scipy.stats import spearmanr

    from ensemble.interaction import spearman

    a = [3.0, 1.0, 2.0, 2.0, float("inf"), 0.5]
    b = [1.0, 4.0, 2.0, 3.0, 9.0, 2.0]
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert spearman(b, b) == pytest.approx(1.0)
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
