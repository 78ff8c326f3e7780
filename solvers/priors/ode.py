"""Few-step deterministic probability-flow ODE samplers in EDM form (Karras et al. 2022, Alg. 1).

For x = x0 + sigma * n the probability-flow ODE is dx/dsigma = (x - D(x, sigma)) / sigma, with D
the denoiser. An Euler step of it is exactly a deterministic DDIM step (Song et al. 2021; Karras
et al. 2022, Sec. 3); Heun adds the trapezoidal correction. The last step, to sigma = 0, is always
the Euler step, which returns D(x, sigma_last). Everything is plain differentiable torch, so the
map z -> x0 can be used as a generator for noise-space Langevin (docs/solvers/noise_langevin.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from solvers.priors.base import Prior, PriorInputError
from solvers.schedules import karras_sigmas

METHODS = ("euler", "heun")
Denoiser = Callable[[torch.Tensor, float], torch.Tensor]


def solve(
    denoise: Denoiser, x: torch.Tensor, sigmas: list[float], method: str = "heun"
) -> torch.Tensor:
    """Integrate the ODE from ``sigmas[0]`` through ``sigmas`` (decreasing, ending at 0).

    Euler uses one denoiser call per step; Heun two, except on the final step to sigma = 0.
    """
    if method not in METHODS:
        raise PriorInputError(f"ODE method must be one of {METHODS}, got {method!r}")
    for sigma, sigma_next in itertools.pairwise(sigmas):
        x0 = denoise(x, sigma)
        if sigma_next == 0:
            return x0
        slope = (x - x0) / sigma
        x_next = x + (sigma_next - sigma) * slope
        if method == "heun":
            slope_next = (x_next - denoise(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma) * 0.5 * (slope + slope_next)
        x = x_next
    return x


def num_evaluations(steps: int, method: str) -> int:
    """Denoiser calls that ``generate`` makes: ``steps`` (Euler) or ``2 * steps - 1`` (Heun)."""
    return steps if method == "euler" else 2 * steps - 1


def generate(
    prior: Prior, z: torch.Tensor, steps: int, method: str = "heun", rho: float = 7.0
) -> torch.Tensor:
    """Map z ~ N(0, I) to the prior's sampling space: start at ``sigma_max * z``, solve to 0
    over ``steps`` poly-``rho`` levels (``schedules.karras_sigmas``)."""
    sigmas = karras_sigmas(steps, prior.sigma_min, prior.sigma_max, rho)
    return solve(prior.denoise, prior.sigma_max * z, sigmas, method)
