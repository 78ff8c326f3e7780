"""VP (DDPM) networks in EDM form: timestep inversion and the noise-range cap."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from solvers.priors import PriorInputError
from solvers.priors.vp import VPDenoiser

ALPHAS_CUMPROD = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)


class ZeroNetwork(nn.Module):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def test_timestep_inverts_the_models_own_table():
    prior = VPDenoiser(ZeroNetwork(), ALPHAS_CUMPROD, (1, 2, 2))
    steps = torch.tensor([0, 17, 500, 999])
    sigmas = torch.sqrt((1 - ALPHAS_CUMPROD[steps]) / ALPHAS_CUMPROD[steps])
    torch.testing.assert_close(prior.timestep(sigmas), steps.double(), rtol=0, atol=1e-9)


def test_sigma_max_caps_the_accepted_noise_range():
    prior = VPDenoiser(ZeroNetwork(), ALPHAS_CUMPROD, (1, 2, 2), sigma_max=20.0)
    assert prior.sigma_max == 20.0
    x = torch.zeros(1, 1, 2, 2)
    torch.testing.assert_close(prior.denoise(x, 20.0), x)
    with pytest.raises(PriorInputError, match=r"sigma must lie in \[sigma_min, sigma_max\]"):
        prior.denoise(x, 25.0)
    with pytest.raises(PriorInputError, match="noise range"):
        VPDenoiser(ZeroNetwork(), ALPHAS_CUMPROD, (1, 2, 2), sigma_max=500.0)


def test_shipped_pixel_priors_load_with_their_cap():
    from solvers.priors import load

    assert load("digits").sigma_max == 20.0
    assert load("digits", sigma_max=50.0).sigma_max == 50.0
