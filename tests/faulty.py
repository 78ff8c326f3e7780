"""A Gaussian-mixture prior that fails (NaN) on chosen rows, for each solver's non-finite tests."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from solvers.priors.gmm import GaussianMixture


class NaNMixture(GaussianMixture):
    """``base`` whose denoiser returns NaN on the rows where ``fails(x, sigma)`` is true."""

    def __init__(
        self,
        base: GaussianMixture,
        fails: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> None:
        super().__init__(base.means, base.weights, base.std)
        self.fails = fails

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = super()._denoise(x, sigma)
        return torch.where(self.fails(x, sigma)[:, None], math.nan, out)
