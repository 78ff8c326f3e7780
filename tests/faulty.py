"""A Gaussian-mixture prior that fails (NaN) on chosen rows, for each solver's non-finite tests."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from solvers.base import Solver
from solvers.priors.gmm import GaussianMixture, GMMProblem


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


def check_early_failures_stop_only_their_rows(
    build: Callable[[], Solver], p: GMMProblem, sigma_above: float
) -> tuple[NaNMixture, torch.Tensor]:
    """Run ``build()`` with a prior that fails on the particles whose first coordinate starts
    positive while sigma > ``sigma_above`` (the first steps): those particles (some, not all of
    4) are stopped with NaN samples, the others equal those of a run with the sound prior.
    Returns the failing prior and the failing rows."""
    clean = build().sample(p.prior, p.operator, p.y, n=4, seed=2)
    faulty = NaNMixture(p.prior, lambda x, sigma: (x[:, 0] > 0) & (sigma > sigma_above))
    result = build().sample(faulty, p.operator, p.y, n=4, seed=2)
    bad = build().init(p.prior, p.operator, p.y, n=4, seed=2).x[:, 0] > 0
    assert 0 < int(bad.sum()) < 4
    assert [s != "ok" for s in result.status] == bad.tolist()
    assert torch.isnan(result.samples[bad]).all()
    torch.testing.assert_close(result.samples[~bad], clean.samples[~bad], rtol=1e-10, atol=1e-10)
    return faulty, bad
