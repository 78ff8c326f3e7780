"""Prior classes for diffusers networks: pixel and latent diffusion, consistency models.

- ``DiffusionPrior``: a VP/DDPM network (Ho et al. 2020) in the EDM denoiser form of
  :class:`~solvers.priors.vp.VPDenoiser` (Karras et al. 2022), with a few-step deterministic
  probability-flow ODE ``generator`` (``ode.py``).
- ``LatentDiffusionPrior``: the same in an autoencoder's latent space (LDM, Rombach et al. 2022;
  also Stable Diffusion).
- ``ConsistencyPrior``: a consistency model (Song et al. 2023) with its boundary-condition
  parameterisation and a 1- or 2-step generator.

They take built modules (``adapters.py``); ``diffusers_loaders.py`` builds them from folders.
See docs/priors.md.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from solvers.priors import ode
from solvers.priors.adapters import weight_dtype
from solvers.priors.base import Prior, PriorInputError, PriorLoadError, sigma_view
from solvers.priors.vp import VPDenoiser


class DiffusionPrior(VPDenoiser):
    """A VP diffusion network (Ho et al. 2020) in EDM form with an ODE ``generator``.

    ``generator(z)`` maps z ~ N(0, I) to the sampling space by ``ode_steps`` steps of the
    probability-flow ODE from ``sigma_max * z`` (``ode.generate``; Heun: 2 * ode_steps - 1
    network calls, Euler = DDIM: ode_steps calls). Deterministic and differentiable.
    """

    def __init__(
        self,
        network: nn.Module,
        alphas_cumprod: torch.Tensor,
        shape: tuple[int, ...],
        *,
        ode_steps: int = 10,
        ode_method: str = "heun",
        **vp: Any,
    ) -> None:
        """``vp``: the keywords of ``VPDenoiser`` (prediction_type, timestep_mode, sigma_max)."""
        super().__init__(network, alphas_cumprod, shape, **vp)
        if isinstance(ode_steps, bool) or not isinstance(ode_steps, int) or ode_steps < 1:
            raise PriorInputError(f"ode_steps must be an integer >= 1, got {ode_steps!r}")
        if ode_method not in ode.METHODS:
            raise PriorInputError(f"ode_method must be one of {ode.METHODS}, got {ode_method!r}")
        self.ode_steps = ode_steps
        self.ode_method = ode_method

    def generator(self, z: torch.Tensor) -> torch.Tensor:
        """Deterministic noise-to-sample map: the probability-flow ODE from sigma_max * z."""
        return ode.generate(self, z, self.ode_steps, self.ode_method)


class LatentDiffusionPrior(DiffusionPrior):
    """A diffusion prior in an autoencoder's latent space (LDM, Rombach et al. 2022).

    The sampling space is z = (E(image) - shift_factor) * scaling_factor and
    decode(z) = D(z / scaling_factor + shift_factor), images in the autoencoder's range ([-1, 1]).
    ``encode`` takes the posterior mean for AutoencoderKL (deterministic) and the pre-quantisation
    latent for VQModel, as the LDM code's ``encode_first_stage`` does. ``decode`` of a VQModel
    quantises first when ``quantize`` (as LDM's ``decode_first_stage`` and diffusers' LDMPipeline
    do); the quantiser's straight-through estimator (z + (z_q - z).detach()) keeps the decoder
    differentiable with an identity Jacobian through the codebook lookup.
    """

    is_latent = True

    def __init__(
        self,
        network: nn.Module,
        alphas_cumprod: torch.Tensor,
        shape: tuple[int, ...],
        autoencoder: nn.Module,
        scaling_factor: float,
        shift_factor: float = 0.0,
        quantize: bool = True,
        **diffusion: Any,
    ) -> None:
        super().__init__(network, alphas_cumprod, shape, **diffusion)
        config = autoencoder.config
        if config.latent_channels != self.shape[0]:
            raise PriorLoadError(
                f"the autoencoder has {config.latent_channels} latent channels but the UNet "
                f"samples {self.shape[0]}"
            )
        if not math.isfinite(scaling_factor) or scaling_factor <= 0:
            raise PriorLoadError(f"scaling_factor must be finite and > 0, got {scaling_factor}")
        factor = 2 ** (len(config.block_out_channels) - 1)
        self.image_shape = (int(config.out_channels), *(s * factor for s in self.shape[1:]))
        self.autoencoder = autoencoder
        self.is_vq = type(autoencoder).__name__ == "VQModel"
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = float(shift_factor)
        self.quantize = bool(quantize)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Image (B, *image_shape) in [-1, 1] -> latent (B, *shape); differentiable."""
        _check_shape(self, image, self.image_shape, "image")
        x = image.to(weight_dtype(self.autoencoder))
        if self.is_vq:
            h = self.autoencoder.encode(x).latents
        else:
            h = self.autoencoder.encode(x).latent_dist.mode()
        return ((h - self.shift_factor) * self.scaling_factor).to(image.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, *shape) -> image (B, *image_shape); differentiable."""
        _check_shape(self, z, self.shape, "z")
        h = (z / self.scaling_factor + self.shift_factor).to(weight_dtype(self.autoencoder))
        if self.is_vq:
            out = self.autoencoder.decode(h, force_not_quantize=not self.quantize).sample
        else:
            out = self.autoencoder.decode(h).sample
        return out.to(z.dtype)


class ConsistencyPrior(Prior):
    """A consistency model f(x, sigma) (Song et al. 2023) with EDM-style boundary conditions.

    f(x, sigma) = c_skip x + c_out F(c_in x, 250 ln sigma), c_in = 1 / sqrt(sigma^2 + s_d^2),
    c_skip = s_d^2 / ((sigma - sigma_min)^2 + s_d^2),
    c_out = (sigma - sigma_min) s_d / sqrt(sigma^2 + s_d^2), s_d = sigma_data, as diffusers'
    CMStochasticIterativeScheduler and ConsistencyModelPipeline compute it. ``denoise`` returns
    f: a one-step estimate of x0, not the exact posterior mean E[x0 | x] of the contract.

    ``generator(z)``: 1 step, G(z) = f(sigma_max z, sigma_max); 2 steps (the CPS generator,
    docs/priors.md), x = f(sigma_max z, sigma_max),
    G(z) = f(x + xi sqrt(sigma_mid^2 - sigma_min^2), sigma_mid) with the intermediate noise xi
    (buffer ``noise``, one draw shared by all particles) fixed by ``noise_seed``.
    ``clip_denoised`` clamps f to [-1, 1] as the diffusers pipeline does; it is off by default
    because the clamp zeroes gradients of saturated pixels.
    """

    def __init__(
        self,
        network: nn.Module,
        shape: tuple[int, ...],
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        steps: int = 1,
        sigma_mid: float = 2.818,
        noise_seed: int = 0,
        clip_denoised: bool = False,
    ) -> None:
        super().__init__(shape, sigma_min, sigma_max)
        if steps not in (1, 2):
            raise PriorInputError(f"consistency generator steps must be 1 or 2, got {steps!r}")
        if not sigma_min < sigma_mid < sigma_max:
            raise PriorInputError(
                f"sigma_mid must lie in ({sigma_min:g}, {sigma_max:g}), got {sigma_mid}"
            )
        self.network = network
        self.sigma_data = float(sigma_data)
        self.steps = steps
        self.sigma_mid = float(sigma_mid)
        self.clip_denoised = bool(clip_denoised)
        noise = torch.randn(self.shape, generator=torch.Generator().manual_seed(int(noise_seed)))
        self.register_buffer("noise", noise, persistent=False)

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s, sd = sigma_view(sigma, x.dim()), self.sigma_data
        c_in = 1.0 / torch.sqrt(s**2 + sd**2)
        c_skip = sd**2 / ((s - self.sigma_min) ** 2 + sd**2)
        c_out = (s - self.sigma_min) * sd * c_in
        out = c_skip * x + c_out * self.network(c_in * x, 250.0 * torch.log(sigma))
        return out.clamp(-1.0, 1.0) if self.clip_denoised else out

    def generator(self, z: torch.Tensor) -> torch.Tensor:
        """Deterministic 1- or 2-step consistency sampling from z ~ N(0, I); differentiable."""
        x = self.denoise(self.sigma_max * z, self.sigma_max)
        if self.steps == 2:
            scale = math.sqrt(self.sigma_mid**2 - self.sigma_min**2)
            x = self.denoise(x + scale * self.noise.to(x.dtype), self.sigma_mid)
        return x


def _check_shape(prior: Prior, x: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise PriorInputError(f"{type(prior).__name__}: {name} must be a floating-point tensor")
    if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
        raise PriorInputError(
            f"{type(prior).__name__}: {name} has shape {tuple(x.shape)}; expected (batch, "
            f"{', '.join(map(str, shape))})"
        )
