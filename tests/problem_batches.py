"""Batches of several problems (images) for the solver contract: k problems x m particles.

An analytic image prior (a Gaussian mixture over flattened C x H x W images, exact denoiser;
optionally behind an invertible elementwise "decoder") lets every solver run on image operators
(random inpainting, phase retrieval) in milliseconds; the GMM cases use the MCGdiff mixture and
the ``matrix`` operator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import operators
from operators import Operator
from solvers.priors.base import Prior
from solvers.priors.gmm import GaussianMixture, default_gmm_prior, mcgdiff_problem
from tests.operator_cases import build_small

F64 = torch.float64
IMAGE = (1, 6, 6)


class ImageMixture(Prior):
    """A Gaussian mixture over images of ``shape`` (flattened), with its exact denoiser."""

    def __init__(self, shape: tuple[int, ...] = IMAGE, components: int = 3, seed: int = 0):
        d = 1
        for size in shape:
            d *= size
        gen = torch.Generator().manual_seed(seed)
        means = 0.5 * torch.randn(components, d, generator=gen, dtype=F64)
        weights = torch.full((components,), 1 / components, dtype=F64)
        mixture = GaussianMixture(means, weights, std=0.3).to(F64)
        super().__init__(shape, mixture.sigma_min, mixture.sigma_max)
        self.mixture = mixture

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.mixture._denoise(x.flatten(1), sigma).view_as(x)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.mixture.sample(n, generator).view(n, *self.shape)


class LatentImageMixture(ImageMixture):
    """The same mixture as a latent prior: image = decode(z) = 1.5 z + 0.1 (elementwise)."""

    is_latent = True

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return 1.5 * z + 0.1

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return (image - 0.1) / 1.5


@dataclass
class Batch:
    """k problems: their prior, operators and measurements (one row each)."""

    prior: Prior
    operators: list[Operator]
    ys: list[torch.Tensor]


def _measure(prior: Prior, operator: Operator, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 + seed)
    assert isinstance(prior, ImageMixture | GaussianMixture)
    x = prior.sample(1, gen)
    if prior.is_latent:
        x = prior.decode(x)
    return operator.measure(x, gen)


def gmm_shared(latent: bool, k: int) -> Batch:
    """The MCGdiff instance (8, 2, 0): one matrix operator, k measurements of k prior draws."""
    p = mcgdiff_problem(8, 2, 0, latent=latent)
    return Batch(p.prior, [p.operator] * k, [_measure(p.prior, p.operator, i) for i in range(k)])


def gmm_stacked(latent: bool, k: int) -> Batch:
    """k matrix operators (the A of MCGdiff instances 0..k-1, one noise level): per-row A."""
    prior = default_gmm_prior(8, latent=latent)
    ops = [
        operators.build("matrix", A=mcgdiff_problem(8, 2, i).operator.A, sigma=0.3).to(F64)
        for i in range(k)
    ]
    return Batch(prior, ops, [_measure(prior, op, i) for i, op in enumerate(ops)])


def inpaint_stacked(latent: bool, k: int) -> Batch:
    """k random-inpainting operators with different masks (seeds 0..k-1): per-row masks."""
    prior = (LatentImageMixture if latent else ImageMixture)()
    ops = [build_small("inpaint_random", shape=IMAGE, seed=i, drop=0.5) for i in range(k)]
    return Batch(prior, ops, [_measure(prior, op, i) for i, op in enumerate(ops)])


def phase_shared(latent: bool, k: int) -> Batch:
    """One phase-retrieval operator, k measurements of k prior draws."""
    prior = (LatentImageMixture if latent else ImageMixture)()
    op = build_small("phase_retrieval", shape=IMAGE)
    return Batch(prior, [op] * k, [_measure(prior, op, i) for i in range(k)])


CASES: dict[str, Callable[[bool, int], Batch]] = {
    "matrix": gmm_shared,
    "matrix_stacked": gmm_stacked,
    "inpaint_random_stacked": inpaint_stacked,
    "phase_retrieval": phase_shared,
}
