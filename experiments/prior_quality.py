"""Quality figures for a trained prior's model card.

- Held-out denoising error at several noise levels against the best Gaussian (Wiener) prior
  fitted on the same training images: the linear MMSE denoiser
  mu + C (C + sigma^2 I)^-1 (x - mu), the optimum among all priors that are Gaussian.
  A learned prior must beat it clearly to be worth shipping.
- For digits, a classifier trained on real training digits, applied to generated samples:
  the share it classifies confidently and the spread over the ten classes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class WienerDenoiser:
    """The MMSE denoiser of the Gaussian fitted to training images (mean and covariance)."""

    mean: torch.Tensor  # (d,)
    eigenvalues: torch.Tensor  # (d,)
    eigenvectors: torch.Tensor  # (d, d)

    @classmethod
    def fit(cls, images: torch.Tensor) -> WienerDenoiser:
        flat = images.flatten(1).to(torch.float64)
        mean = flat.mean(0)
        centred = flat - mean
        covariance = centred.T @ centred / flat.shape[0]
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        return cls(mean, eigenvalues.clamp_min(0.0), eigenvectors)

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        flat = x.flatten(1).to(torch.float64) - self.mean
        gain = self.eigenvalues / (self.eigenvalues + sigma**2)
        coords = (flat @ self.eigenvectors) * gain
        return (coords @ self.eigenvectors.T + self.mean).view_as(x).to(x.dtype)


def denoising_mse(
    denoise: Denoiser,
    images: torch.Tensor,
    sigmas: list[float],
    generator: torch.Generator,
    batch_size: int = 256,
) -> dict[float, float]:
    """Mean squared error per pixel of ``denoise(x0 + sigma n, sigma)`` against x0."""
    errors = {}
    for sigma in sigmas:
        total = 0.0
        for start in range(0, images.shape[0], batch_size):
            x0 = images[start : start + batch_size]
            noisy = x0 + sigma * torch.randn(x0.shape, generator=generator)
            with torch.no_grad():
                total += (denoise(noisy, sigma) - x0).pow(2).sum().item()
        errors[sigma] = total / images.numel()
    return errors


@dataclass(frozen=True)
class DigitClassifierReport:
    """How a classifier of real digits sees generated samples."""

    real_test_accuracy: float
    real_test_confident: float
    samples_confident: float
    class_counts: list[int]


def classify_digits(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    test: torch.Tensor,
    test_labels: torch.Tensor,
    samples: torch.Tensor,
    confidence: float = 0.9,
) -> DigitClassifierReport:
    """Logistic regression on real training digits, applied to test digits and to samples."""
    from sklearn.linear_model import LogisticRegression

    classifier = LogisticRegression(max_iter=3000, C=0.1)
    classifier.fit(train.flatten(1).numpy(), train_labels.numpy())
    test_probs = classifier.predict_proba(test.flatten(1).numpy())
    sample_probs = classifier.predict_proba(samples.clamp(-1, 1).flatten(1).numpy())
    predicted = sample_probs.argmax(1)
    return DigitClassifierReport(
        real_test_accuracy=float((test_probs.argmax(1) == test_labels.numpy()).mean()),
        real_test_confident=float((test_probs.max(1) >= confidence).mean()),
        samples_confident=float((sample_probs.max(1) >= confidence).mean()),
        class_counts=[int((predicted == k).sum()) for k in range(10)],
    )


def save_grid(images: torch.Tensor, path: str | Path, columns: int = 8, scale: int = 2) -> None:
    """Save a batch in [-1, 1] as one PNG grid (1 px gaps), enlarged ``scale`` times."""
    from PIL import Image

    images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, channels, height, width = images.shape
    rows = (n + columns - 1) // columns
    grid = torch.full((channels, rows * (height + 1) + 1, columns * (width + 1) + 1), 255)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        top, left = 1 + r * (height + 1), 1 + c * (width + 1)
        grid[:, top : top + height, left : left + width] = image
    array = grid.to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0] if channels == 1 else array)
    picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST).save(path)
