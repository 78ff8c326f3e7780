"""FID and KID: the library's formulas on fixed features against independent numpy/scipy
computations, torchmetrics' Inception on seeded random weights end to end, and where the
weights come from (a path, the hub cache, or an error that says where to put them)."""

from __future__ import annotations

import functools
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import scipy.linalg
import torch

from experiments import metrics


def _features(seed: int, n: int, d: int, shift: float, scale: float) -> torch.Tensor:
    """n correlated Gaussian features (d,) with mean ``shift`` and a seeded mixing matrix."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d, d, generator=gen, dtype=torch.float64) * scale
    return torch.randn(n, d, generator=gen, dtype=torch.float64) @ mixing + shift


def _frechet_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """The Frechet distance of the Gaussians fitted to a and b, by scipy's matrix square root."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def _mmd_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased squared MMD with k(x, y) = (x.y / d + 1)^3, pair by pair."""
    d = a.shape[1]

    def k(x: np.ndarray, y: np.ndarray) -> float:
        return (x @ y / d + 1) ** 3

    m, n = len(a), len(b)
    within_a = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    within_b = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    across = sum(k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)
    return within_a + within_b - 2 * across


def test_frechet_distance_equals_scipy_sqrtm() -> None:
    a = _features(0, 60, 12, shift=0.5, scale=0.4)
    b = _features(1, 45, 12, shift=0.2, scale=0.7)
    want = _frechet_numpy(a.numpy(), b.numpy())
    assert want > 1.0
    assert metrics.frechet_distance(a, b) == pytest.approx(want, rel=1e-9)
    assert metrics.frechet_distance(b, a) == pytest.approx(want, rel=1e-9)
    assert abs(metrics.frechet_distance(a, a)) < 1e-9 * want


def test_frechet_distance_closed_form_rank_deficient() -> None:
    # a: mean (1, 0), covariance diag(2, 0); b: mean (1, 2), covariance diag(0, 2); the product
    # of the covariances is 0, so FID = |(0, 2)|^2 + 2 + 2 = 8.
    a = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    assert metrics.frechet_distance(a, b) == pytest.approx(8.0, abs=1e-12)


def test_kernel_distance_equals_unbiased_mmd() -> None:
    a = _features(2, 30, 6, shift=0.3, scale=0.5)
    b = _features(3, 30, 6, shift=0.0, scale=0.5)
    want = _mmd_numpy(a.numpy(), b.numpy())
    # Subsets as large as the sets: every subset is the whole set, so every draw gives the MMD.
    mean, std = metrics.kernel_distance(a, b, subsets=3, subset_size=1000)
    assert mean == pytest.approx(want, rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-9 * abs(want))
    # A set against itself: the within terms skip the diagonal, the cross term keeps it, so the
    # unbiased estimate is negative, not zero.
    same, _ = metrics.kernel_distance(a, a, subsets=1)
    assert same < 0
    assert same == pytest.approx(_mmd_numpy(a.numpy(), a.numpy()), rel=1e-9)


def test_kernel_distance_subsets_average_to_the_full_statistic() -> None:
    # Both squared-MMD terms are U-statistics, so their mean over random subsets (drawn without
    # replacement) is, in expectation, the statistic of the full sets.
    a = _features(4, 40, 6, shift=0.4, scale=0.5)
    b = _features(5, 30, 6, shift=0.0, scale=0.5)
    full = _mmd_numpy(a.numpy(), b.numpy())
    subsets = 400
    state = torch.random.get_rng_state()
    mean, std = metrics.kernel_distance(a, b, subsets=subsets, subset_size=10)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert std > 0
    assert abs(mean - full) < 4 * std / subsets**0.5
    assert metrics.kernel_distance(a, b, subsets=subsets, subset_size=10) == (mean, std)
    with pytest.raises(ValueError, match="subset_size must be >= 2"):
        metrics.kernel_distance(a, b, subset_size=1)


def test_feature_sets_are_checked() -> None:
    a = _features(6, 5, 4, shift=0.0, scale=1.0)
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.frechet_distance(a[:1], a)
    with pytest.raises(ValueError, match="dimension mismatch"):
        metrics.kernel_distance(a, a[:, :3])
    with pytest.raises(ValueError, match="non-finite"):
        metrics.frechet_distance(a, a.clone().fill_(float("nan")))


# -- the Inception network on random weights --------------------------------------------------
@functools.cache
def _images() -> tuple[torch.Tensor, torch.Tensor]:
    """Two small grayscale sets in [-1, 1]: smooth blobs, and the same blobs brighter."""
    gen = torch.Generator().manual_seed(7)
    t = torch.linspace(-1, 1, 16, dtype=torch.float64)
    centres = torch.rand(3, 2, generator=gen, dtype=torch.float64) - 0.5
    r2 = (t.view(1, -1, 1) - centres[:, 0].view(-1, 1, 1)) ** 2 + (
        t.view(1, 1, -1) - centres[:, 1].view(-1, 1, 1)
    ) ** 2
    blobs = (2 * torch.exp(-r2 / 0.2) - 1).unsqueeze(1)  # (3, 1, 16, 16)
    return blobs, (blobs + 0.8).clamp(-1, 1)


def _uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).repeat(1, 3, 1, 1)


@pytest.mark.slow
def test_random_backbone_fid_equals_torchmetrics_end_to_end() -> None:
    from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3

    x, y = _images()
    features = metrics.inception_features(x, random_backbone=True)
    assert features.shape == (len(x), metrics.FID_FEATURES)
    assert torch.isfinite(features).all()
    assert features.std(0).max() > 0  # the images are told apart
    assert isinstance(metrics._inception(None, True, "cpu"), NoTrainInceptionV3)
    got = metrics.fid(x, y, random_backbone=True)
    # torchmetrics' own FID metric, its Inception on the same random weights, fed 8-bit RGB.
    library = FrechetInceptionDistance(
        feature=metrics.FID_FEATURES,
        feature_extractor_weights_path=metrics._random_inception_weights(),
        antialias=False,
    ).set_dtype(torch.float64)
    library.update(_uint8_rgb(y), real=True)
    library.update(_uint8_rgb(x), real=False)
    assert got > 0
    assert got == pytest.approx(float(library.compute()), rel=1e-5)
    # FID(x, x): rank-deficient covariances (3 images, 2048 features) leave only round-off.
    assert abs(metrics.frechet_distance(features, features)) < 1e-3 * got
    with pytest.raises(ValueError, match="not both"):
        metrics.fid(x, y, weights="w.pth", random_backbone=True)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        metrics.inception_features(x.repeat(1, 2, 1, 1), random_backbone=True)
    with pytest.raises(ValueError, match="at least 2 images"):
        metrics.inception_features(x[:1], random_backbone=True)


def _offline(*args, **kwargs):
    raise URLError("no network")


def _weights_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(metrics._random_inception_weights().getvalue())
    return path


@pytest.mark.slow
def test_weights_from_a_path_or_the_hub_cache(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    x, _ = _images()
    want = metrics.inception_features(x, random_backbone=True)
    given = _weights_file(tmp_path / "inception.pth")
    assert metrics.fid_weights_file(given) == given
    assert torch.allclose(metrics.inception_features(x, weights=given), want, atol=1e-6)
    name = Path(metrics._fid_weights_url()).name
    cached = _weights_file(tmp_path / "torch" / "hub" / "checkpoints" / name)
    assert metrics.fid_weights_file() == cached
    assert torch.allclose(metrics.inception_features(x), want, atol=1e-6)


def test_without_weights_the_error_says_where_to_put_them(monkeypatch, tmp_path) -> None:
    # An empty hub cache and no network, as on the build machines (also where there is one).
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    x, y = _images()
    with pytest.raises(RuntimeError, match="fid_random_backbone") as info:
        metrics.fid(x, y)
    message = str(info.value)
    assert metrics._fid_weights_url() in message
    assert str(tmp_path / "hub" / "checkpoints" / Path(metrics._fid_weights_url()).name) in message
    assert "metrics.fid_weights" in message
    with pytest.raises(FileNotFoundError, match=r"missing\.pth does not exist"):
        metrics.kid(x, y, weights=tmp_path / "missing.pth")


def test_fid_label_marks_random_backbone() -> None:
    assert "random" not in metrics.fid_label()
    assert "not comparable" in metrics.fid_label(random_backbone=True)
