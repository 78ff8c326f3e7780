"""The exact-posterior protocol of the Gaussian-mixture benchmark (docs/gmm_benchmark.md).

One MCGdiff instance (Cardoso et al., "Monte Carlo guided diffusion for Bayesian linear inverse
problems", ICLR 2024; built by ``solvers.priors.gmm.mcgdiff_problem``) is scored by the sliced
Wasserstein-1 distance of solver samples to exact posterior samples, over random directions
shared by every row of the instance. The perfect-sampler floor is the same distance for a second,
independent set of exact samples: a solver is judged by SW / floor. Latent instances are scored
in image space (latent samples decoded, the latent posterior pushed forward).

Every random draw of an instance comes from its own stream, seeded from (run seed, instance key,
stream) through NumPy's ``SeedSequence``, so that a figure does not depend on the order or the
process in which instances run. The GMM benchmark, the ensemble GMM benchmark and GMM studies
(experiments/tuning.py) all score through this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from experiments.metrics import (
    COVERAGE_LEVELS,
    central_intervals,
    coverage_name,
    interval_hits,
    sliced_wasserstein,
)
from solvers.priors.gmm import GaussianMixturePosterior, GMMProblem, mcgdiff_problem

# The independent random streams of one instance.
STREAM_REFERENCE, STREAM_FLOOR, STREAM_SLICES, STREAM_PRIOR, STREAM_SOLVER = range(5)
DEFAULT_SLICES = 100


def stream_seed(seed: int, key: int, stream: int) -> int:
    """A 63-bit seed for random stream ``stream`` of instance ``key`` in a run seeded ``seed``."""
    state = np.random.SeedSequence([seed, key, stream]).generate_state(1, np.uint64)
    return int(state[0]) >> 1


def exact_coverage(
    samples: torch.Tensor,
    log_weights: torch.Tensor | None,
    posterior_samples: torch.Tensor,
    levels: Sequence[float] = COVERAGE_LEVELS,
) -> dict[str, float]:
    """Calibration of a sampler's draws against the exact posterior.

    ``samples`` (N, d), N >= 2: the sampler's draws for one instance, with their ``log_weights``
    (N,) (any additive constant; None for equal weights). ``posterior_samples`` (M, d): exact
    posterior draws (``ExactInstance.reference``), each playing the ground truth. Returns
    ``coverage_<100 l>`` per level l: the share of (draw, coordinate) pairs inside the
    per-coordinate central interval of the weighted samples (``experiments.metrics``:
    ``central_intervals``, the same intervals as the image rows' ``coverage``). For draws from
    the exact posterior the expected value is about l (N - 1) / (N + 1) with N independent
    equally weighted samples (l at large N); too narrow a cloud scores below l, too wide a one
    above.
    """
    if samples.dim() != 2 or samples.shape[0] < 2:
        raise ValueError(
            f"exact_coverage: samples must have shape (N, d) with N >= 2, got "
            f"{tuple(samples.shape)}"
        )
    if posterior_samples.dim() != 2 or posterior_samples.shape[1] != samples.shape[1]:
        raise ValueError(
            f"exact_coverage: posterior_samples must have shape (M, {samples.shape[1]}), got "
            f"{tuple(posterior_samples.shape)}"
        )
    lower, upper = central_intervals(samples, log_weights, levels)
    hits = interval_hits(lower, upper, posterior_samples.to(lower.device, torch.float64))
    return {coverage_name(float(level)): float(h) for level, h in zip(levels, hits, strict=True)}


def image_posterior(problem: GMMProblem) -> GaussianMixturePosterior:
    """The exact posterior over images (pushed through the decoder for a latent prior)."""
    if problem.prior.is_latent:
        return problem.posterior.pushforward(problem.prior.decoder, problem.prior.bias)
    return problem.posterior


@dataclass(frozen=True)
class ExactInstance:
    """One instance under the protocol: the problem and its random streams, keyed by the run
    ``seed`` and the instance ``key``; ``slices`` random directions for every SW."""

    problem: GMMProblem
    seed: int
    key: int
    slices: int = DEFAULT_SLICES

    @classmethod
    def mcgdiff(
        cls,
        d: int,
        d_y: int,
        number: int,
        *,
        latent: bool = False,
        seed: int = 0,
        key: int | None = None,
        slices: int = DEFAULT_SLICES,
    ) -> ExactInstance:
        """MCGdiff instance ``number`` (float64); ``key`` defaults to ``number``."""
        problem = mcgdiff_problem(d, d_y, number, latent=latent)
        return cls(problem, seed, number if key is None else key, slices)

    @cached_property
    def posterior(self) -> GaussianMixturePosterior:
        """The exact posterior over images."""
        return image_posterior(self.problem)

    def generator(self, stream: int) -> torch.Generator:
        """A CPU generator on one of the instance's streams."""
        return torch.Generator().manual_seed(stream_seed(self.seed, self.key, stream))

    @property
    def solver_seed(self) -> int:
        """The seed a solver samples this instance with."""
        return stream_seed(self.seed, self.key, STREAM_SOLVER)

    def reference(self, n: int) -> torch.Tensor:
        """The ``n`` exact posterior samples every row of the instance is compared with."""
        return self.posterior.sample(n, self.generator(STREAM_REFERENCE))

    def exact(self, n: int) -> torch.Tensor:
        """``n`` further exact posterior samples, independent of ``reference`` (the floor's)."""
        return self.posterior.sample(n, self.generator(STREAM_FLOOR))

    def prior_draws(self, n: int) -> torch.Tensor:
        """``n`` prior draws in image space: what a sampler that ignores y returns."""
        prior = self.problem.prior
        draws = prior.sample(n, self.generator(STREAM_PRIOR))
        return prior.decode(draws) if prior.is_latent else draws

    def sw(self, samples: torch.Tensor, reference: torch.Tensor) -> float:
        """Sliced Wasserstein-1 of ``samples`` to ``reference`` over the instance's directions."""
        return sliced_wasserstein(samples, reference, self.slices, self.generator(STREAM_SLICES))

    def floor(self, n: int, reference: torch.Tensor) -> float:
        """The perfect-sampler floor: SW of ``n`` independent exact samples to ``reference``."""
        return self.sw(self.exact(n), reference)
