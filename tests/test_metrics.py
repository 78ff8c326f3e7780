"""Metrics against scikit-image on real photographs, and LPIPS with a seeded random backbone."""

from __future__ import annotations

import functools
import math
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import operators
from experiments import metrics


def _photo(name: str, top: int, left: int, size: int) -> torch.Tensor:
    """A crop of a scikit-image photograph as a (C, size, size) float64 tensor in [-1, 1]."""
    array = getattr(data, name)()
    if array.ndim == 2:
        array = array[..., None]
    crop = array[top : top + size, left : left + size]
    return torch.from_numpy(crop).permute(2, 0, 1).double() / 127.5 - 1


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Per-channel Gaussian blur (reflect padding) of a (B, C, H, W) batch."""
    t = torch.arange(-7, 8, dtype=x.dtype)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    c = x.shape[1]
    x = F.pad(x, (7, 7, 7, 7), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)


@functools.cache
def _distorted_pairs(channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(distorted, reference) batches of 4 photograph crops with noise, blur and both.

    The noise is not clipped, so values leave [-1, 1] and the metrics' clipping is exercised.
    """
    gen = torch.Generator().manual_seed(0)
    if channels == 3:
        crops = [
            _photo("astronaut", 30, 180, 64),
            _photo("coffee", 100, 250, 64),
            _photo("astronaut", 300, 200, 64),
            _photo("coffee", 200, 50, 64),
        ]
    else:
        crops = [
            _photo("camera", 60, 200, 64),
            _photo("camera", 300, 300, 64),
            _photo("camera", 100, 30, 64),
            _photo("camera", 400, 400, 64),
        ]
    reference = torch.stack(crops)
    noise = torch.randn(reference.shape, generator=gen, dtype=torch.float64)
    distorted = torch.stack(
        [
            reference[0] + 0.1 * noise[0],
            _blur(reference[1:2], 1.0)[0],
            _blur(reference[2:3], 2.5)[0] + 0.3 * noise[2],
            reference[3] + 0.02 * noise[3],
        ]
    )
    return distorted, reference


def _skimage_unit(x: torch.Tensor) -> np.ndarray:
    """One (C, H, W) image in [-1, 1] as the (H, W, C) [0, 1] array that scikit-image gets."""
    return np.clip((x.permute(1, 2, 0).numpy() + 1) / 2, 0, 1)


def _skimage_ssim(x: torch.Tensor, reference: torch.Tensor) -> float:
    """scikit-image's SSIM of one (C, H, W) pair with the settings of Wang et al. 2004 (11x11
    Gaussian window, sigma 1.5, population covariance), the reference protocol."""
    return structural_similarity(
        _skimage_unit(reference),
        _skimage_unit(x),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=2,
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_psnr_and_ssim_match_skimage_per_sample(channels: int) -> None:
    distorted, reference = _distorted_pairs(channels)
    got_psnr = metrics.psnr(distorted, reference)
    got_ssim = metrics.ssim(distorted, reference)
    assert got_psnr.shape == got_ssim.shape == (4,)
    for i in range(4):
        a, b = _skimage_unit(distorted[i]), _skimage_unit(reference[i])
        want_psnr = peak_signal_noise_ratio(b, a, data_range=1.0)
        want_ssim = _skimage_ssim(distorted[i], reference[i])
        assert got_psnr[i].item() == pytest.approx(want_psnr, abs=1e-4)
        assert got_ssim[i].item() == pytest.approx(want_ssim, abs=1e-4)
    # The distortions differ in strength, so the values must too (no constant output).
    assert got_ssim.std() > 0.05
    assert got_psnr.std() > 1.0


def test_float32_input_gives_the_float64_values() -> None:
    distorted, reference = _distorted_pairs(3)
    assert torch.allclose(
        metrics.ssim(distorted.float(), reference.float()),
        metrics.ssim(distorted, reference),
        atol=1e-5,
    )
    assert torch.allclose(
        metrics.psnr(distorted.float(), reference.float()),
        metrics.psnr(distorted, reference),
        atol=1e-4,
    )


def test_psnr_of_a_known_offset() -> None:
    reference = torch.zeros(2, 3, 16, 16)
    # 0.2 in [-1, 1] units is 0.1 in [0, 1] units: MSE 0.01, PSNR 20 dB.
    x = reference + torch.tensor([0.2, -0.02]).view(2, 1, 1, 1)
    assert torch.allclose(metrics.psnr(x, reference), torch.tensor([20.0, 40.0]).double())


def test_identical_images() -> None:
    _, reference = _distorted_pairs(3)
    assert torch.isinf(metrics.psnr(reference, reference)).all()
    assert torch.allclose(metrics.ssim(reference, reference), torch.ones(4, dtype=torch.float64))


def test_batch_items_are_independent() -> None:
    distorted, reference = _distorted_pairs(3)
    psnr_all = metrics.psnr(distorted, reference)
    ssim_all = metrics.ssim(distorted, reference)
    for i in range(4):
        one = (distorted[i : i + 1], reference[i : i + 1])
        assert metrics.psnr(*one).item() == pytest.approx(psnr_all[i].item(), abs=1e-10)
        assert metrics.ssim(*one).item() == pytest.approx(ssim_all[i].item(), abs=1e-10)
    order = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(metrics.ssim(distorted[order], reference[order]), ssim_all[order])


def test_ssim_on_the_smallest_image_and_other_channel_counts() -> None:
    gen = torch.Generator().manual_seed(1)
    reference = torch.rand(2, 2, 11, 13, generator=gen, dtype=torch.float64) * 2 - 1
    x = (reference + 0.2 * torch.randn(reference.shape, generator=gen, dtype=torch.float64)).clamp(
        -1, 1
    )
    got = metrics.ssim(x, reference)
    for i in range(2):
        assert got[i].item() == pytest.approx(_skimage_ssim(x[i], reference[i]), abs=1e-6)


@pytest.mark.parametrize(
    ("x", "reference", "message"),
    [
        (torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 17), "shape mismatch"),
        (torch.zeros(3, 16, 16), torch.zeros(3, 16, 16), r"\(B, C, H, W\)"),
        (torch.full((1, 1, 16, 16), math.nan), torch.zeros(1, 1, 16, 16), "non-finite"),
        (torch.zeros(1, 1, 16, 16), torch.full((1, 1, 16, 16), math.inf), "non-finite"),
        (torch.zeros(1, 1, 10, 16), torch.zeros(1, 1, 10, 16), "at least 11x11"),
    ],
)
def test_bad_input_raises(x: torch.Tensor, reference: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metrics.ssim(x, reference)
    if "11x11" not in message:
        with pytest.raises(ValueError, match=message):
            metrics.psnr(x, reference)


# -- LPIPS (random backbone: no download) ----------------------------------------------------


@pytest.fixture(scope="module")
def lpips_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Three 64x64 colour photograph crops and noisy versions of them (float32)."""
    reference = torch.stack(
        [
            _photo("astronaut", 30, 180, 64),
            _photo("coffee", 100, 250, 64),
            _photo("astronaut", 300, 200, 64),
        ]
    ).float()
    gen = torch.Generator().manual_seed(2)
    scales = torch.tensor([0.05, 0.2, 0.5]).view(3, 1, 1, 1)
    noisy = reference + scales * torch.randn(reference.shape, generator=gen)
    return noisy.clamp(-1, 1), reference


def test_lpips_zero_for_identical_and_positive_otherwise(lpips_pair) -> None:
    noisy, reference = lpips_pair
    same = metrics.lpips(reference, reference, random_backbone=True)
    assert same.shape == (3,)
    assert torch.allclose(same, torch.zeros(3, dtype=torch.float64), atol=1e-6)
    different = metrics.lpips(noisy, reference, random_backbone=True)
    assert (different > 1e-3).all()
    # More noise, larger distance.
    assert different[0] < different[1] < different[2]


def test_lpips_per_sample_equals_one_by_one(lpips_pair) -> None:
    noisy, reference = lpips_pair
    batch = metrics.lpips(noisy, reference, random_backbone=True)
    for i in range(3):
        one = metrics.lpips(noisy[i : i + 1], reference[i : i + 1], random_backbone=True)
        assert one.item() == pytest.approx(batch[i].item(), rel=1e-4, abs=1e-6)


def test_lpips_random_backbone_is_deterministic_and_keeps_global_rng(lpips_pair) -> None:
    noisy, reference = lpips_pair
    first = metrics.lpips(noisy, reference, random_backbone=True)
    assert torch.equal(first, metrics.lpips(noisy, reference, random_backbone=True))

    # A fresh build, from another global RNG state, gives the same numbers and leaves that
    # state as it was.
    torch.manual_seed(456)
    state = torch.get_rng_state()
    metrics._lpips_model.cache_clear()
    rebuilt = metrics.lpips(noisy, reference, random_backbone=True)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.allclose(rebuilt, first, atol=1e-7)


def test_lpips_grayscale_is_repeated_to_rgb(lpips_pair) -> None:
    noisy, reference = lpips_pair
    gray_x, gray_ref = noisy[:, :1], reference[:, :1]
    got = metrics.lpips(gray_x, gray_ref, random_backbone=True)
    want = metrics.lpips(
        gray_x.repeat(1, 3, 1, 1), gray_ref.repeat(1, 3, 1, 1), random_backbone=True
    )
    assert torch.allclose(got, want)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        metrics.lpips(noisy[:, :2], reference[:, :2], random_backbone=True)
    with pytest.raises(ValueError, match="at least 31 pixels"):
        metrics.lpips(noisy[..., :30], reference[..., :30], random_backbone=True)


def test_lpips_without_backbone_weights_names_the_fix(monkeypatch, tmp_path, lpips_pair) -> None:
    def offline(*args, **kwargs):
        raise URLError("no network")

    # An empty hub cache and no network, as on the build machines (also where there is one).
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    noisy, reference = lpips_pair
    with pytest.raises(RuntimeError, match="random_backbone=True") as info:
        metrics.lpips(noisy, reference)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(ValueError, match="net must be one of"):
        metrics.lpips(noisy, reference, net="resnet", random_backbone=True)


def test_lpips_label_marks_random_backbone() -> None:
    assert metrics.lpips_label("alex") == "LPIPS-alex"
    assert "not comparable" in metrics.lpips_label("alex", random_backbone=True)


# -- measurement loss -------------------------------------------------------------------------


def test_measurement_loss_is_the_per_sample_squared_residual() -> None:
    operator = operators.build("hdr", shape=(1, 2, 2), sigma=0.0)  # A(x) = clip(2x, -1, 1)
    x = torch.tensor([[[[0.0, 0.5], [1.0, -1.0]]], [[[0.1, 0.1], [0.1, 0.1]]]])
    y = torch.zeros(2, 1, 2, 2)
    # ||A(x)||^2: 0 + 1 + 1 + 1 = 3 and 4 * 0.2^2 = 0.16.
    got = metrics.measurement_loss(operator, x, y)
    assert torch.allclose(got, torch.tensor([3.0, 0.16], dtype=torch.float64), atol=1e-6)


# -- weighted quantiles, coverage ---------------------------------------------------------------


def test_unweighted_quantiles_are_torch_quantile() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, 5, generator=gen, dtype=torch.float64)
    q = [0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0]
    expected = torch.quantile(x, torch.tensor(q, dtype=torch.float64), dim=0)
    assert torch.allclose(metrics.weighted_quantiles(x, None, q), expected, rtol=0, atol=1e-12)
    # Equal log-weights of any value are equal weights; a number q drops the level axis.
    got = metrics.weighted_quantiles(x, torch.full((7,), -3.0), 0.3)
    assert got.shape == (3, 5)
    assert torch.allclose(got, torch.quantile(x, 0.3, dim=0), rtol=0, atol=1e-12)


def test_weighted_quantiles_by_hand() -> None:
    # Values 0, 1, 2 with weights 1/2, 1/4, 1/4: C = (1/2, 3/4, 1), midpoints (1/4, 5/8, 7/8),
    # positions ((1/4 - 1/4), (5/8 - 1/4), (7/8 - 1/4)) / (1 - 1/4 - 1/8) = (0, 0.6, 1).
    # Pixel 1 holds the same values in another particle order: weights follow the values.
    samples = torch.tensor([[0.0, 2.0], [1.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    log_weights = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64).log()
    got = metrics.weighted_quantiles(samples, log_weights, [0.0, 0.3, 0.6, 0.8, 1.0])
    # Pixel 1: values 0 (w 1/4), 1 (w 1/4), 2 (w 1/2): positions (0, 0.4, 1) by symmetry.
    expected = torch.tensor(
        [[0.0, 0.0], [0.5, 0.75], [1.0, 1 + 0.2 / 0.6], [1.5, 1 + 0.4 / 0.6], [2.0, 2.0]],
        dtype=torch.float64,
    )
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)


def test_weighted_quantiles_drop_zero_weights_and_are_symmetric() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 40, generator=gen, dtype=torch.float64)
    lw = torch.randn(6, generator=gen, dtype=torch.float64)
    q = torch.tensor([0.1, 0.5, 0.85], dtype=torch.float64)
    with_dead = torch.cat([lw, torch.tensor([-math.inf])])
    extended = torch.cat([x, torch.full((1, 40), 100.0, dtype=torch.float64)])
    assert torch.equal(
        metrics.weighted_quantiles(extended, with_dead, q), metrics.weighted_quantiles(x, lw, q)
    )
    mirrored = -metrics.weighted_quantiles(-x, lw, 1 - q)
    assert torch.allclose(metrics.weighted_quantiles(x, lw, q), mirrored, rtol=0, atol=1e-12)
    # One particle carries all the weight: every quantile is its value.
    single = torch.tensor([0.0, -math.inf, -math.inf, -math.inf, -math.inf, -math.inf])
    assert torch.equal(metrics.weighted_quantiles(x, single, q), x[0].expand(3, -1))


@pytest.mark.parametrize(
    ("log_weights", "q", "message"),
    [
        (torch.tensor([0.0, math.nan, 0.0]), 0.5, "log_weights"),
        (torch.full((3,), -math.inf), 0.5, "log_weights"),
        (torch.zeros(2), 0.5, "shape"),
        (None, 1.5, "q must"),
    ],
)
def test_weighted_quantiles_bad_input_raises(log_weights, q, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metrics.weighted_quantiles(torch.zeros(3, 2), log_weights, q)


def test_coverage_and_weighted_std_by_hand() -> None:
    # Per pixel the values 0, 1, 2 (weights 1/2, 1/4, 1/4 on particles 0, 1, 2 of pixel 0).
    # Level 0.4: quantiles 0.3 and 0.7, for pixel 0 [0.5, 1.25]; for pixel 1 (values 2, 0, 1,
    # positions 0, 0.4, 1 for 0, 1, 2) [0.75, 1 + 0.3 / 0.6]. Truths on both bounds are in.
    samples = torch.tensor(
        [[0.0, 2.0, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0], [2.0, 1.0, 2.0, 2.0]], dtype=torch.float64
    )
    log_weights = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64).log()
    truth = torch.tensor([0.5, 1.5, 0.4, 1.3], dtype=torch.float64)
    got = metrics.coverage(samples, log_weights, truth, levels=(0.4,))
    assert got["coverage_40"] == 0.5
    # Pixel 0: mean 0.75, scatter 0.6875, 1 - sum w^2 = 0.625: variance 1.1.
    std = metrics.weighted_std(samples, log_weights)
    assert std[0].item() == pytest.approx(math.sqrt(1.1), rel=1e-12)
    assert got["posterior_std"] == pytest.approx(float(std.mean()), rel=1e-12)
    # Equal weights: Bessel's std.
    assert torch.allclose(metrics.weighted_std(samples, None), samples.double().std(0), atol=1e-12)
    even = metrics.coverage(samples, None, truth, levels=(0.5, 0.9))
    assert set(even) == {"coverage_50", "coverage_90", "posterior_std"}


def _calibration_tolerance(level: float, trials: int) -> float:
    """Four binomial standard deviations of a share of ``trials`` hits of probability level."""
    return 4 * math.sqrt(level * (1 - level) / trials)


def test_coverage_of_a_calibrated_and_an_over_confident_sampler() -> None:
    """Truths and 199 samples per pixel from N(0, 1): coverage is about l (N - 1) / (N + 1)
    for N independent draws (the expected share between order statistics); samples with the
    std halved cover 50% and 90% of the truths only P(|Z| < 0.337) = 0.26 and
    P(|Z| < 0.822) = 0.59 of the time."""
    gen = torch.Generator().manual_seed(2)
    n, pixels = 199, 20_000
    samples = torch.randn(n, pixels, generator=gen, dtype=torch.float64)
    truth = torch.randn(pixels, generator=gen, dtype=torch.float64)
    calibrated = metrics.coverage(samples, None, truth)
    narrow = metrics.coverage(samples / 2, None, truth)
    for level, name in ((0.5, "coverage_50"), (0.9, "coverage_90")):
        expected = level * (n - 1) / (n + 1)
        assert abs(calibrated[name] - expected) < _calibration_tolerance(level, pixels)
        assert narrow[name] < level - 0.2
    assert calibrated["posterior_std"] == pytest.approx(1.0, abs=0.01)
    assert narrow["posterior_std"] == pytest.approx(calibrated["posterior_std"] / 2, rel=1e-12)


def test_coverage_with_weights_independent_of_the_values() -> None:
    """999 particles from N(0, 1) with log-normal weights drawn apart from their values
    (about 370 effective): the weighted cloud is still calibrated."""
    gen = torch.Generator().manual_seed(4)
    n, pixels = 999, 4000
    samples = torch.randn(n, pixels, generator=gen, dtype=torch.float64)
    truth = torch.randn(pixels, generator=gen, dtype=torch.float64)
    log_weights = torch.randn(n, generator=gen, dtype=torch.float64)
    got = metrics.coverage(samples, log_weights, truth)
    for level, name in ((0.5, "coverage_50"), (0.9, "coverage_90")):
        assert abs(got[name] - level) < _calibration_tolerance(level, pixels) + 0.005


def test_importance_weights_make_a_wide_proposal_calibrated() -> None:
    """Draws from N(0, 2^2) weighted by N(0, 1) / N(0, 2^2) (log-weight -3 x^2 / 8) cover a
    N(0, 1) truth at the nominal levels (about 330 effective draws of 500: a bias under
    0.006); unweighted they cover it far too often (P(|Z| < 1.35) = 0.82 at 50%)."""
    gen = torch.Generator().manual_seed(3)
    trials, n = 800, 500
    weighted = {"coverage_50": 0.0, "coverage_90": 0.0}
    plain = dict(weighted)
    for _ in range(trials):
        draws = 2 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
        truth = torch.randn(1, generator=gen, dtype=torch.float64)
        for totals, log_weights in ((weighted, -3 * draws[:, 0] ** 2 / 8), (plain, None)):
            for key, value in metrics.coverage(draws, log_weights, truth).items():
                if key in totals:
                    totals[key] += value / trials
    for level, name in ((0.5, "coverage_50"), (0.9, "coverage_90")):
        assert abs(weighted[name] - level) < _calibration_tolerance(level, trials) + 0.006
    assert plain["coverage_50"] > 0.7


def _ensemble_result(particles: torch.Tensor, status: list[str], log_weights=None):
    from ensemble import EnsembleResult

    return EnsembleResult(
        samples=particles[:1],  # 'best' selection: one sample; coverage still uses every particle
        all_samples=particles,
        loss=torch.zeros(len(particles)),
        status=status,
        selected=[0],
        origin=list(range(len(particles))),
        nfe=1,
        nfe_spent=1,
        seconds=0.0,
        traces={},
        stats={},
        log_weights=log_weights,
    )


def test_ensemble_metrics_coverage_of_the_finished_particles() -> None:
    """Rows score the coverage of the truth by every finished particle in [0, 1] units (the
    failed particle's wild values change nothing), weighted when the result has weights; with
    one finished particle the coverage columns are absent and posterior_std is 0."""
    from experiments.config import MetricsConfig

    gen = torch.Generator().manual_seed(5)
    truth = torch.rand(1, 1, 11, 11, generator=gen) * 2 - 1
    particles = (truth + 0.3 * torch.randn(6, 1, 11, 11, generator=gen)).clamp(-1, 1)
    particles[2] = 50.0
    status = ["ok", "ok", "failed", "ok", "ok", "ok"]
    alive = [0, 1, 3, 4, 5]
    operator = operators.build("hdr", shape=(1, 11, 11), sigma=0.0)
    y = operator(truth)
    settings = MetricsConfig(lpips=False)
    unit_truth = (truth[0].double() + 1) / 2
    unit_particles = (particles[alive].double() + 1) / 2

    row = metrics.ensemble_metrics(
        settings, operator, truth, y, _ensemble_result(particles, status)
    )
    expected = metrics.coverage(unit_particles, None, unit_truth)
    assert {k: row[k] for k in expected} == pytest.approx(expected, rel=1e-12)
    assert set(metrics.COVERAGE_COLUMNS) <= set(expected)
    spread = metrics.particle_spread(particles[alive])
    assert row["posterior_std"] == pytest.approx(spread["posterior_std"], rel=1e-5)

    log_weights = torch.tensor([-1.0, -0.2, -math.inf, -3.0, -0.5, -2.0], dtype=torch.float64)
    weighted = metrics.ensemble_metrics(
        settings, operator, truth, y, _ensemble_result(particles, status, log_weights)
    )
    expected = metrics.coverage(unit_particles, log_weights[alive], unit_truth)
    assert {k: weighted[k] for k in expected} == pytest.approx(expected, rel=1e-12)
    assert weighted["posterior_std"] != pytest.approx(row["posterior_std"], rel=1e-3)

    lone = metrics.ensemble_metrics(
        settings, operator, truth, y, _ensemble_result(particles[:3], ["ok", "failed", "failed"])
    )
    assert not set(metrics.COVERAGE_COLUMNS) & set(lone)
    assert lone["posterior_std"] == 0.0
