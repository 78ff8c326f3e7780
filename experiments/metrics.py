"""Image-quality metrics of the evaluation protocol (docs/evaluation.md).

Inputs are batches ``(B, C, H, W)`` in the project's [-1, 1] convention; every metric returns
one value per batch item, a float64 tensor of shape ``(B,)`` on the input's device. Metrics are
for evaluation, so they run without autograd.

- ``psnr`` and ``ssim`` map images to [0, 1] by ``(x + 1) / 2`` and clip, then use data range 1.
  SSIM uses an 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, population covariances and
  only the positions where the whole window fits; it equals scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=1.0)``, averaged over channels.
- ``lpips`` uses the ``lpips`` package (AlexNet by default, as in DPS and ReSample; DAPS used
  piq's VGG variant, whose numbers differ). ``random_backbone=True`` builds it without the
  torchvision download, for tests only: label such numbers with ``lpips_label``.

FID and KID are set-level: ``fid`` and ``kid`` compare a set of samples with a set of
references (each a batch in [-1, 1]) and return one number (KID: mean and std over subsets).
They use torchmetrics' FID and KID (Inception-v3 pool features of torch-fidelity, the
TensorFlow FID network converted to PyTorch); ``fid_random_backbone=True`` is the same
network on seeded random weights, for tests only: label such numbers with ``fid_label``.
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from ensemble import EnsembleResult
    from experiments.config import MetricsConfig
    from operators.base import Operator

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# Backbones of the lpips package and the smallest image side each one accepts.
LPIPS_MIN_SIZE = {"alex": 31, "vgg": 16, "squeeze": 17}
# Seed of the random LPIPS backbone, so that test numbers are reproducible.
LPIPS_RANDOM_SEED = 0
# The levels of the central credible intervals whose coverage of the truth ``dipswarm run``
# records per image (columns ``COVERAGE_COLUMNS``).
COVERAGE_LEVELS = (0.5, 0.9)
# Entries of the quantile sort per chunk of pixels in ``weighted_quantiles`` (float64: 128 MiB).
QUANTILE_CHUNK = 2**24


def psnr(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per item, data range 1; ``inf`` for identical images."""
    a, b = _to_unit_range(x, reference, "psnr")
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    return -10.0 * torch.log10(mse)


def ssim(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Structural similarity per item (Gaussian window, mean over valid positions and channels)."""
    a, b = _to_unit_range(x, reference, "ssim")
    batch, channels, height, width = a.shape
    if min(height, width) < SSIM_WINDOW:
        raise ValueError(
            f"ssim: images must be at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels (the Gaussian "
            f"window), got {height}x{width}"
        )
    a = a.reshape(batch * channels, 1, height, width)
    b = b.reshape(batch * channels, 1, height, width)
    # One filtering pass for the five local moments.
    moments = _gaussian_filter_valid(torch.cat([a, b, a * a, b * b, a * b]))
    mu_a, mu_b, aa, bb, ab = moments.chunk(5)
    var_a = aa - mu_a * mu_a
    var_b = bb - mu_b * mu_b
    cov = ab - mu_a * mu_b
    c1 = SSIM_K1**2
    c2 = SSIM_K2**2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    )
    return ssim_map.reshape(batch, -1).mean(dim=1)


def lpips(
    x: torch.Tensor,
    reference: torch.Tensor,
    net: str = "alex",
    random_backbone: bool = False,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """LPIPS distance per item with the ``lpips`` package; grayscale inputs are repeated to RGB.

    ``device`` is where the network runs (default: the input's device). ``random_backbone=True``
    uses a seeded random backbone with the package's linear heads: it needs no download, but its
    numbers are not comparable with published LPIPS.
    """
    _check_pair(x, reference, "lpips")
    if net not in LPIPS_MIN_SIZE:
        raise ValueError(f"lpips: net must be one of {list(LPIPS_MIN_SIZE)}, got {net!r}")
    if x.shape[1] not in (1, 3):
        raise ValueError(f"lpips: needs 1 or 3 channels, got {x.shape[1]}")
    if min(x.shape[-2:]) < LPIPS_MIN_SIZE[net]:
        raise ValueError(
            f"lpips: the {net} backbone needs images of at least {LPIPS_MIN_SIZE[net]} pixels "
            f"per side, got {x.shape[-2]}x{x.shape[-1]}"
        )
    run_device = torch.device(device) if device is not None else x.device
    model = _lpips_model(net, bool(random_backbone), str(run_device))
    a = x.to(run_device, torch.float32).clamp(-1, 1).expand(-1, 3, -1, -1)
    b = reference.to(run_device, torch.float32).clamp(-1, 1).expand(-1, 3, -1, -1)
    with torch.no_grad():
        distance = model(a, b)
    return distance.reshape(-1).to(x.device, torch.float64)


def lpips_label(net: str = "alex", random_backbone: bool = False) -> str:
    """Column label for reports, so that random-backbone LPIPS is never taken for the real one."""
    if random_backbone:
        return f"LPIPS-{net} (random backbone, not comparable)"
    return f"LPIPS-{net}"


def measurement_loss(operator: Operator, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-item squared residual ``||A(x) - y||^2`` (the Operator's ``loss``), shape ``(B,)``."""
    with torch.no_grad():
        return operator.loss(x, y).to(torch.float64)


def image_metrics(
    samples: torch.Tensor,
    truth: torch.Tensor,
    operator: Operator,
    y: torch.Tensor,
    lpips_net: str | None = None,
    random_backbone: bool = False,
    flip: bool = False,
) -> dict[str, float]:
    """Scores of the samples ``(n, C, H, W)`` of one image ``truth`` ``(1, C, H, W)`` measured
    as ``y`` ``(1, ...)``, each averaged over the samples: ``psnr``, ``ssim``,
    ``measurement_loss``, ``lpips`` (nan when ``lpips_net`` is None or the image is smaller than
    the backbone accepts) and, with ``flip``,
    ``psnr_flip``: the better PSNR of each sample and its 180-degree rotation (phase retrieval
    cannot tell them apart)."""
    reference = truth.expand_as(samples)
    values = {
        "psnr": psnr(samples, reference),
        "ssim": ssim(samples, reference),
        "measurement_loss": measurement_loss(
            operator, samples, y.expand(len(samples), *y.shape[1:])
        ),
    }
    if flip:
        rotated = samples.flip(-2, -1)
        values["psnr_flip"] = torch.maximum(values["psnr"], psnr(rotated, reference))
    out = {k: float(v.mean()) for k, v in values.items()}
    out["lpips"] = math.nan
    if lpips_net is not None and min(truth.shape[-2:]) >= LPIPS_MIN_SIZE[lpips_net]:
        out["lpips"] = float(lpips(samples, reference, lpips_net, random_backbone).mean())
    return out


def particle_spread(particles: torch.Tensor) -> dict[str, float]:
    """Spread of an ensemble's particles ``(n, C, H, W)`` in [0, 1] units: ``posterior_std``
    (per-pixel std, averaged) and ``diversity`` (mean pairwise distance per sqrt(pixels));
    both 0 for fewer than two particles."""
    if len(particles) < 2:
        return {"posterior_std": 0.0, "diversity": 0.0}
    unit = (particles.float().clamp(-1, 1) + 1) / 2
    return {
        "posterior_std": float(unit.std(0).mean()),
        "diversity": float(torch.pdist(unit.flatten(1)).mean() / math.sqrt(unit[0].numel())),
    }


def ensemble_metrics(
    settings: MetricsConfig,
    operator: Operator,
    truth: torch.Tensor,
    y: torch.Tensor,
    result: EnsembleResult,
) -> dict[str, float | str]:
    """The row metrics of one image of ``dipswarm run`` and of image studies: ``image_metrics``
    of the selected samples (LPIPS as ``settings`` asks, ``lpips_backbone`` naming the network
    that scored it, "" for none), the spread of the particles that finished and, with at least
    two of them, their calibration: ``coverage`` of the truth in [0, 1] units by the central
    intervals of every finished particle (whatever the selection), weighted by the result's
    final ``log_weights`` where it has them (weighted samplers); then ``posterior_std`` is the
    weighted std. With fewer than two finished particles the ``COVERAGE_COLUMNS`` are left
    out."""
    lpips_net = settings.lpips_net if settings.lpips else None
    chosen = result.samples.float().to(truth.device)  # results come back on the CPU
    random_backbone = settings.lpips_random_backbone
    out: dict[str, float | str] = dict(
        image_metrics(chosen, truth, operator, y, lpips_net, random_backbone)
    )
    scored = lpips_net is not None and not math.isnan(float(out["lpips"]))
    out["lpips_backbone"] = lpips_label(settings.lpips_net, random_backbone) if scored else ""
    alive = [i for i, status in enumerate(result.status) if status == "ok"]
    particles = result.all_samples[alive]
    out.update(particle_spread(particles))
    if len(alive) >= 2:
        log_weights = None if result.log_weights is None else result.log_weights[alive]
        unit_particles = _unit(particles.to(truth.device))
        out.update(coverage(unit_particles, log_weights, _unit(truth[0]), COVERAGE_LEVELS))
    return out


def coverage_name(level: float) -> str:
    """The column of a credible level: ``coverage_50`` for 0.5, ``coverage_97.5`` for 0.975."""
    return f"coverage_{100 * level:g}"


COVERAGE_COLUMNS = tuple(coverage_name(level) for level in COVERAGE_LEVELS)


def normalised_weights(log_weights: torch.Tensor | None, n: int) -> torch.Tensor:
    """Self-normalised weights (float64, CPU) of ``n`` samples from their log-weights (any
    additive constant); equal weights for None. -inf gives weight 0; NaN, +inf or no finite
    entry raise ValueError."""
    if log_weights is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    lw = torch.as_tensor(log_weights).detach().to("cpu", torch.float64)
    if lw.shape != (n,):
        raise ValueError(f"log_weights must have shape ({n},), got {tuple(lw.shape)}")
    if torch.isnan(lw).any() or (lw == math.inf).any() or not torch.isfinite(lw).any():
        raise ValueError(
            "log_weights must be finite or -inf with at least one finite entry, got "
            f"{lw.tolist() if n <= 8 else 'NaN, +inf or all -inf entries'}"
        )
    return torch.softmax(lw, dim=0)


def weighted_quantiles(
    samples: torch.Tensor,
    log_weights: torch.Tensor | None,
    q: float | Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """Pixel-wise (per coordinate) quantiles of a weighted empirical distribution.

    ``samples`` (N, ...) are N draws, ``log_weights`` (N,) their log-weights, self-normalised
    here (equal weights for None). Each coordinate's draws are sorted, x_0 <= ... <= x_{N-1},
    with normalised weights w_k (zero-weight draws dropped) and cumulative weights C_k; draw k
    sits at the rescaled midpoint position p_k = (C_k - w_k / 2 - w_0 / 2) / (1 - w_0 / 2 -
    w_{N-1} / 2), so p_0 = 0 and p_{N-1} = 1, and the q-quantile interpolates linearly between
    the draws whose positions bracket q. For equal weights p_k = k / (N - 1): exactly the
    default ('linear') ``torch.quantile``. The definition is symmetric (the q-quantile of -x
    is minus the (1 - q)-quantile of x) but, unlike the inverse CDF, a draw of weight 2/N is
    not the same as two draws of weight 1/N. One draw of positive weight gives its value.

    Returns float64 like ``torch.quantile(samples, q, dim=0)``: shape ``samples.shape[1:]``
    for a number ``q``, ``(len(q), *samples.shape[1:])`` for a sequence.
    """
    if not isinstance(samples, torch.Tensor) or samples.dim() < 1 or samples.shape[0] == 0:
        raise ValueError("weighted_quantiles: samples must be a tensor (N, ...) with N >= 1")
    if not torch.isfinite(samples).all():
        raise ValueError("weighted_quantiles: samples have non-finite values (nan or inf)")
    levels = torch.as_tensor(q, dtype=torch.float64)
    if levels.dim() > 1 or ((levels < 0) | (levels > 1)).any():
        raise ValueError(f"weighted_quantiles: q must be a number or 1-D in [0, 1], got {q}")
    weights = normalised_weights(log_weights, samples.shape[0])
    kept = weights > 0
    x = samples[kept.to(samples.device)].detach().to(torch.float64)
    x = x.reshape(len(x), -1)
    w = (weights[kept] / weights[kept].sum()).to(x.device)
    wanted = levels.reshape(-1).to(x.device)
    if len(w) == 1:
        out = x[0].expand(len(wanted), -1)
    else:
        rows = max(1, QUANTILE_CHUNK // len(w))
        pixels = x.T  # (P, N)
        out = torch.cat(
            [_interpolated(pixels[i : i + rows], w, wanted) for i in range(0, len(pixels), rows)]
        ).T
    out = out.reshape(len(wanted), *samples.shape[1:])
    return out[0] if levels.dim() == 0 else out


def _interpolated(x: torch.Tensor, w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``weighted_quantiles`` of the rows of ``x`` (P, N) (one pixel's draws per row; sorting
    the last axis is the fast one), weights ``w`` (N,) > 0 summing to 1, N >= 2, at the levels
    ``q`` (Q,): (P, Q)."""
    values, order = x.contiguous().sort(dim=1)
    ws = w[order]
    first, last = ws[:, :1], ws[:, -1:]
    positions = (ws.cumsum(dim=1) - ws / 2 - first / 2) / (1 - first / 2 - last / 2)
    targets = q.expand(len(positions), -1).contiguous()  # (P, Q)
    lower = (torch.searchsorted(positions, targets, right=True) - 1).clamp(0, len(w) - 2)
    p_lower, p_upper = positions.gather(1, lower), positions.gather(1, lower + 1)
    gap = p_upper - p_lower  # > 0 in exact arithmetic; rounding can make it 0
    fraction = torch.where(gap > 0, (targets - p_lower) / gap, 0.0).clamp(0, 1)
    v_lower, v_upper = values.gather(1, lower), values.gather(1, lower + 1)
    return v_lower + fraction * (v_upper - v_lower)


def central_intervals(
    samples: torch.Tensor, log_weights: torch.Tensor | None, levels: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-coordinate central credible intervals [q_{(1-l)/2}, q_{(1+l)/2}] of the weighted
    draws ``samples`` (N, ...) for each level l in (0, 1) (``weighted_quantiles``): lower and
    upper bounds, each ``(len(levels), *samples.shape[1:])``."""
    bounds = torch.as_tensor(levels, dtype=torch.float64).reshape(-1)
    if len(bounds) == 0 or ((bounds <= 0) | (bounds >= 1)).any():
        raise ValueError(f"coverage: levels must lie in (0, 1), got {levels}")
    names = [coverage_name(float(level)) for level in bounds]
    if len(set(names)) < len(names):
        raise ValueError(f"coverage: levels give repeated names {names}")
    quantiles = weighted_quantiles(
        samples, log_weights, torch.cat([(1 - bounds) / 2, (1 + bounds) / 2])
    )
    return quantiles[: len(bounds)], quantiles[len(bounds) :]


def weighted_std(samples: torch.Tensor, log_weights: torch.Tensor | None) -> torch.Tensor:
    """Per-coordinate std of weighted draws (N, ...), float64: sum_k w_k (x_k - mean)^2 /
    (1 - sum_k w_k^2), the unbiased estimator for normalised reliability weights, which for
    equal weights is ``samples.std(0)`` (Bessel's correction); 0 where one draw carries all
    the weight."""
    w = normalised_weights(log_weights, samples.shape[0]).to(samples.device)
    x = samples.detach().to(torch.float64)
    w = w.reshape(-1, *([1] * (x.dim() - 1)))
    mean = (w * x).sum(0)
    scatter = (w * (x - mean).pow(2)).sum(0)
    correction = 1 - w.pow(2).sum()
    if correction <= 0:
        return torch.zeros_like(mean)
    return (scatter / correction).sqrt()


def coverage(
    samples: torch.Tensor,
    log_weights: torch.Tensor | None,
    truth: torch.Tensor,
    levels: Sequence[float] = COVERAGE_LEVELS,
) -> dict[str, float]:
    """Calibration of weighted draws ``samples`` (N, ...), N >= 2, against one ``truth`` of
    shape ``samples.shape[1:]``.

    ``coverage_<100 l>`` for each level l: the share of coordinates (pixels) whose truth lies
    in the closed central interval of that coordinate's draws (``central_intervals``); a
    calibrated sampler scores about l in expectation (slightly less with few draws: about
    l (N - 1) / (N + 1) for N independent equally weighted draws), an over-confident one
    less. ``posterior_std``: the mean over coordinates of the weighted std (``weighted_std``).
    """
    if samples.dim() < 1 or samples.shape[0] < 2:
        raise ValueError(f"coverage: needs at least 2 samples, got shape {tuple(samples.shape)}")
    if truth.shape != samples.shape[1:]:
        raise ValueError(
            f"coverage: truth must have shape {tuple(samples.shape[1:])} (one draw), got "
            f"{tuple(truth.shape)}"
        )
    if not torch.isfinite(truth).all():
        raise ValueError("coverage: truth has non-finite values (nan or inf)")
    lower, upper = central_intervals(samples, log_weights, levels)
    inside = interval_hits(lower, upper, truth.to(lower.device, torch.float64))
    out = {
        coverage_name(float(level)): float(hit) for level, hit in zip(levels, inside, strict=True)
    }
    out["posterior_std"] = float(weighted_std(samples, log_weights).mean())
    return out


def interval_hits(lower: torch.Tensor, upper: torch.Tensor, truths: torch.Tensor) -> torch.Tensor:
    """Share of the entries of ``truths`` (..., *shape) inside the closed intervals [lower,
    upper] (L, *shape), per level: (L,) float64. Leading dimensions of ``truths`` beyond the
    intervals' shape are further draws, averaged over."""
    extra = truths.dim() - (lower.dim() - 1)
    if extra < 0 or truths.shape[extra:] != lower.shape[1:]:
        raise ValueError(
            f"coverage: truths of shape {tuple(truths.shape)} do not end in the intervals' "
            f"shape {tuple(lower.shape[1:])}"
        )
    lo = lower.reshape(len(lower), *([1] * extra), *lower.shape[1:])
    hi = upper.reshape(len(upper), *([1] * extra), *upper.shape[1:])
    inside = (lo <= truths) & (truths <= hi)
    return inside.flatten(1).to(torch.float64).mean(dim=1)


def _check_pair(x: torch.Tensor, reference: torch.Tensor, metric: str) -> None:
    """Raise ValueError unless both are finite ``(B, C, H, W)`` tensors of the same shape."""
    for name, t in (("x", x), ("reference", reference)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{metric}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{metric}: {name} must be a batch of shape (B, C, H, W), got shape "
                f"{tuple(t.shape)}; add a batch dimension with x.unsqueeze(0)"
            )
    if x.shape != reference.shape:
        raise ValueError(
            f"{metric}: shape mismatch, x {tuple(x.shape)} vs reference {tuple(reference.shape)}"
        )
    for name, t in (("x", x), ("reference", reference)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{metric}: {name} has non-finite values (nan or inf)")


def _to_unit_range(
    x: torch.Tensor, reference: torch.Tensor, metric: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate, then map [-1, 1] to [0, 1] in float64 and clip."""
    _check_pair(x, reference, metric)
    a = ((x.detach().to(torch.float64) + 1) / 2).clamp(0, 1)
    b = ((reference.detach().to(torch.float64) + 1) / 2).clamp(0, 1)
    return a, b


def _unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clipped: the units of ``particle_spread`` and ``coverage`` rows."""
    return (x.detach().to(torch.float64).clamp(-1, 1) + 1) / 2


def _gaussian_filter_valid(images: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filtering of ``(N, 1, H, W)`` without padding (valid positions only)."""
    radius = SSIM_WINDOW // 2
    t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    g = torch.exp(-(t**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    out = F.conv2d(images, g.view(1, 1, -1, 1))
    return F.conv2d(out, g.view(1, 1, 1, -1))


@functools.cache
def _lpips_model(net: str, random_backbone: bool, device: str) -> torch.nn.Module:
    """Build (once per net, backbone kind and device) a frozen LPIPS model in eval mode."""
    import lpips as lpips_package

    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        # The package still calls torchvision's deprecated ``pretrained=`` interface.
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*")
        # Seed only the CPU generator, inside the fork: the caller's RNG state is untouched.
        torch.random.default_generator.manual_seed(LPIPS_RANDOM_SEED)
        try:
            model = lpips_package.LPIPS(
                net=net, pretrained=True, pnet_rand=random_backbone, verbose=False
            )
        except OSError as err:  # the backbone download failed (URLError is an OSError)
            raise RuntimeError(
                f"lpips: the torchvision {net} backbone weights are not in the torch hub cache "
                f"and could not be downloaded ({err}). Put the torchvision weights file at "
                f"{_backbone_weights_file(net)} (or point TORCH_HOME at a cache that has it), "
                "or pass random_backbone=True for tests (its numbers are not comparable with "
                "published LPIPS)."
            ) from err
    model = model.eval().to(device)
    model.requires_grad_(False)
    return model


def _backbone_weights_file(net: str) -> Path:
    """Where torchvision's loader looks for the ImageNet weights of the LPIPS backbone."""
    from torchvision import models

    weights = {
        "alex": models.AlexNet_Weights.IMAGENET1K_V1,
        "vgg": models.VGG16_Weights.IMAGENET1K_V1,
        "squeeze": models.SqueezeNet1_1_Weights.IMAGENET1K_V1,
    }[net]
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


# Seed of the random directions of ``sliced_wasserstein`` when no generator is given, so that
# the metric is deterministic.
SLICED_WASSERSTEIN_SEED = 0


def sliced_wasserstein(
    a: torch.Tensor,
    b: torch.Tensor,
    n_slices: int = 100,
    generator: torch.Generator | None = None,
) -> float:
    """Sliced Wasserstein-1 distance between point sets ``a`` (N, d) and ``b`` (M, d).

    The mean over ``n_slices`` random unit directions (normalised Gaussian draws from
    ``generator``, default seeded ``SLICED_WASSERSTEIN_SEED``) of the exact 1-D Wasserstein-1
    distance between the projected empirical measures, the metric of the Gaussian-mixture
    benchmark (MCGdiff, Cardoso et al., ICLR 2024; docs/gmm_benchmark.md). The 1-D
    distance is the integral of |F_a - F_b| over the merged projections, exact for any N and M;
    for N == M it equals the mean absolute difference of the sorted projections. Float64.
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] == 0:
            raise ValueError(
                f"sliced_wasserstein: {name} must be a non-empty tensor of shape (N, d), got "
                f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}"
            )
        if not torch.isfinite(t).all():
            raise ValueError(f"sliced_wasserstein: {name} has non-finite values (nan or inf)")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"sliced_wasserstein: dimension mismatch, a has d = {a.shape[1]}, b has {b.shape[1]}"
        )
    if n_slices < 1:
        raise ValueError(f"sliced_wasserstein: n_slices must be >= 1, got {n_slices}")
    if generator is None:
        generator = torch.Generator().manual_seed(SLICED_WASSERSTEIN_SEED)
    directions = torch.randn(
        n_slices, a.shape[1], generator=generator, device=generator.device, dtype=torch.float64
    ).to(a.device)
    directions = directions / directions.norm(dim=1, keepdim=True)
    with torch.no_grad():
        projections = torch.cat([a.to(torch.float64), b.to(a.device, torch.float64)]) @ directions.T
        values, order = projections.T.sort(dim=1)  # (S, N + M), merged and sorted per slice
        # F_a - F_b just right of each merged point: +1/N for a point of a, -1/M for one of b.
        steps = torch.cat(
            [
                torch.full((a.shape[0],), 1.0 / a.shape[0], dtype=torch.float64),
                torch.full((b.shape[0],), -1.0 / b.shape[0], dtype=torch.float64),
            ]
        ).to(a.device)
        cdf_gap = steps[order].cumsum(dim=1)[:, :-1]
        w1 = (cdf_gap.abs() * values.diff(dim=1)).sum(dim=1)
    return float(w1.mean())


# -- FID and KID ------------------------------------------------------------------------------
# The Inception-v3 layer of FID (Heusel et al., NeurIPS 2017) and KID (Binkowski et al., ICLR
# 2018): the 2048 pool features.
FID_FEATURES = 2048
# Classes of the TensorFlow FID Inception's last layer (its state dict has fc of this size).
FID_CLASSES = 1008
# Images per Inception forward pass.
FID_BATCH = 32
# Seed of the random Inception weights, so that test numbers are reproducible.
FID_RANDOM_SEED = 0
# KID as in Binkowski et al. and torchmetrics: 100 random subsets of 1000 items per set (fewer
# when a set is smaller), drawn with this seed.
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 0


def fid_label(random_backbone: bool = False) -> str:
    """Backbone label for reports, so that random-backbone FID and KID are never taken for
    the real ones."""
    if random_backbone:
        return "Inception-v3 (random backbone, not comparable)"
    return "Inception-v3 (TensorFlow FID weights)"


def fid_weights_file(weights: str | Path | None = None) -> Path:
    """The Inception weights that FID and KID load: ``weights`` when given (it must exist), else
    the file torchmetrics loads (torch-fidelity's conversion of the TensorFlow FID Inception)
    in the torch hub cache, ``$TORCH_HOME/hub/checkpoints``, downloaded there (hash checked)
    when missing. FileNotFoundError for a missing ``weights``; RuntimeError naming the URL and
    the place when the cache lacks the file and it cannot be downloaded."""
    url = _fid_weights_url()
    name = os.path.basename(urlparse(url).path)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"fid: the Inception weights file {path} does not exist; put {name} (from "
                f"{url}) there, or leave the weights unset to use the torch hub cache"
            )
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / name
    if cached.is_file():
        return cached
    digest = re.search(r"-([0-9a-f]+)\.pth$", name)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(
            url, str(cached), hash_prefix=digest.group(1) if digest else None, progress=False
        )
    except OSError as err:  # no network (URLError is an OSError) or an unwritable cache
        raise RuntimeError(
            f"fid: the Inception weights {name} are not in the torch hub cache and could not "
            f"be downloaded from {url} ({err}). Download that file and put it at {cached} (or "
            "point TORCH_HOME at a cache that has it), or give its path as metrics.fid_weights "
            "(the weights argument); metrics.fid_random_backbone (random_backbone=True) runs "
            "without it, for tests only (its numbers are not comparable with published FID)."
        ) from err
    return cached


def inception_features(
    images: torch.Tensor,
    weights: str | Path | None = None,
    random_backbone: bool = False,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Inception-v3 pool features ``(N, 2048)`` (float64, CPU) of images ``(N, C, H, W)`` in
    [-1, 1] with 1 or 3 channels, as torchmetrics' FID computes them: quantised to 8 bits like
    saved PNGs (round(255 (x + 1) / 2), clipped), grayscale repeated to RGB, resized to
    299x299 by torch-fidelity's bilinear resize that matches TensorFlow 1.x (the original FID
    code's; torchmetrics' ``antialias=False``), then the network. ``weights``: see
    ``fid_weights_file``; ``random_backbone=True`` uses the same network on seeded random
    weights (no download; numbers not comparable with published FID). ``device`` is where
    the network runs (default: the images' device)."""
    _check_images(images, "inception_features")
    if random_backbone and weights is not None:
        raise ValueError("fid: give Inception weights or random_backbone=True, not both")
    run_device = torch.device(device) if device is not None else images.device
    source = None if random_backbone else str(fid_weights_file(weights))
    model = _inception(source, bool(random_backbone), str(run_device))
    pixels = ((images.detach().to(torch.float64).clamp(-1, 1) + 1) * 127.5).round()
    pixels = pixels.to(torch.uint8).expand(-1, 3, -1, -1)
    with torch.no_grad():
        features = [
            model(pixels[i : i + FID_BATCH].to(run_device)).to("cpu", torch.float64)
            for i in range(0, len(pixels), FID_BATCH)
        ]
    return torch.cat(features)


def frechet_distance(features: torch.Tensor, reference_features: torch.Tensor) -> float:
    """Frechet distance ``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` between the
    Gaussians fitted (mean, unbiased covariance) to two feature sets ``(N, d)`` and ``(M, d)``,
    N, M >= 2: torchmetrics' FID formula on given features, in float64."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = _check_features(features, reference_features, "frechet_distance")
    metric = FrechetInceptionDistance(feature=_GivenFeatures(a.shape[1]))
    metric.update(b, real=True)
    metric.update(a, real=False)
    return float(metric.compute())


def kernel_distance(
    features: torch.Tensor,
    reference_features: torch.Tensor,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = KID_SEED,
) -> tuple[float, float]:
    """Kernel distance (KID, Binkowski et al., ICLR 2018) between feature sets ``(N, d)`` and
    ``(M, d)``: the unbiased squared MMD with the kernel ``k(x, y) = (x.y / d + 1)^3`` on
    ``subsets`` random subsets of min(``subset_size``, N, M) >= 2 items drawn without
    replacement from each set; returns the mean and the (population) std over subsets.
    torchmetrics' KID on given features; the draws are seeded by ``seed`` (the caller's RNG
    state is untouched)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    a, b = _check_features(features, reference_features, "kernel_distance")
    if subset_size < 2:
        raise ValueError(f"kernel_distance: subset_size must be >= 2, got {subset_size}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        metric = KernelInceptionDistance(
            feature=_GivenFeatures(a.shape[1]),
            subsets=subsets,
            subset_size=min(subset_size, len(a), len(b)),
        )
    metric.update(b, real=True)
    metric.update(a, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def fid(
    samples: torch.Tensor,
    references: torch.Tensor,
    weights: str | Path | None = None,
    random_backbone: bool = False,
    device: str | torch.device | None = None,
) -> float:
    """FID between a set of samples ``(N, C, H, W)`` and references ``(M, C, H, W)`` in
    [-1, 1], N, M >= 2: ``frechet_distance`` of their ``inception_features`` (same
    arguments)."""
    return frechet_distance(
        inception_features(samples, weights, random_backbone, device),
        inception_features(references, weights, random_backbone, device),
    )


def kid(
    samples: torch.Tensor,
    references: torch.Tensor,
    weights: str | Path | None = None,
    random_backbone: bool = False,
    device: str | torch.device | None = None,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
) -> tuple[float, float]:
    """KID (mean, std over subsets) between samples and references as for ``fid``:
    ``kernel_distance`` of their ``inception_features``; sets smaller than ``subset_size``
    use subsets of the smaller set's size."""
    return kernel_distance(
        inception_features(samples, weights, random_backbone, device),
        inception_features(references, weights, random_backbone, device),
        subsets,
        subset_size,
    )


class _GivenFeatures(torch.nn.Module):
    """The identity, as torchmetrics' "feature extractor": its FID and KID then take features."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _check_images(images: torch.Tensor, metric: str) -> None:
    """Raise ValueError unless ``images`` is a finite ``(N, C, H, W)`` set, N >= 2, C 1 or 3."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(
            f"{metric}: images must be a tensor of shape (N, C, H, W), got "
            f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}"
        )
    if len(images) < 2:
        raise ValueError(f"{metric}: a set needs at least 2 images, got {len(images)}")
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{metric}: needs 1 or 3 channels, got {images.shape[1]}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{metric}: images have non-finite values (nan or inf)")


def _check_features(
    a: torch.Tensor, b: torch.Tensor, metric: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets as float64 CPU ``(N, d)``, ``(M, d)`` with N, M >= 2 and finite values."""
    out = []
    for name, t in (("features", a), ("reference_features", b)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or len(t) < 2:
            raise ValueError(
                f"{metric}: {name} must be a tensor (N, d) with N >= 2, got "
                f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}"
            )
        if not torch.isfinite(t).all():
            raise ValueError(f"{metric}: {name} has non-finite values (nan or inf)")
        out.append(t.detach().to("cpu", torch.float64))
    if out[0].shape[1] != out[1].shape[1]:
        raise ValueError(
            f"{metric}: dimension mismatch, {out[0].shape[1]} vs {out[1].shape[1]} features"
        )
    return out[0], out[1]


def _fid_weights_url() -> str:
    """Where torch-fidelity (torchmetrics' FID network) downloads its Inception weights from."""
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return URL_INCEPTION_V3


@functools.cache
def _inception(weights: str | None, random_backbone: bool, device: str) -> torch.nn.Module:
    """torchmetrics' FID Inception (once per weights, backbone kind and device), frozen, with
    torch-fidelity's TensorFlow-compatible resize; ``weights`` is a file (None: random)."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    source = _random_inception_weights() if random_backbone else weights
    model = NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=[str(FID_FEATURES)],
        feature_extractor_weights_path=source,
        antialias=False,
    )
    return model.to(device)


def _random_inception_weights() -> io.BytesIO:
    """Seeded weights for the FID Inception, as a loadable state dict: torchvision's Inception3
    with ``FID_CLASSES`` classes and no auxiliary head has the parameter names and shapes of
    torch-fidelity's network; its convolutions get He-normal weights (so features stay of
    order one through the depth), batch norms their identity defaults."""
    from torchvision.models import inception_v3

    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(FID_RANDOM_SEED)
        net = inception_v3(
            weights=None, aux_logits=False, init_weights=False, num_classes=FID_CLASSES
        )
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    return buffer
