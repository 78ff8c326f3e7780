"""The Prior contract: one denoiser in EDM/VE form (docs/priors.md; Karras et al. 2022).

For x = x0 + sigma * n with n ~ N(0, I), ``denoise(x, sigma)`` returns E[x0 | x]. Every solver
talks to a prior only through this contract, so pixel, latent, analytic and hub models are
interchangeable. Each batched call of the underlying network counts as one function
evaluation (``nfe``).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PriorInputError(ValueError):
    """Raised for input that does not fit a prior; the message names the fix."""


class PriorLoadError(PriorInputError):
    """A prior spec that cannot be resolved or loaded; the message names the path or the fix."""


class PriorSpecError(PriorLoadError):
    """A prior spec that names nothing loadable (``solvers.priors.resolve``): the message names
    the spec, the problem and the choices. Raised before any weight is read."""


class Prior(nn.Module):
    """Base class: subclasses implement ``_denoise(x, sigma)`` with sigma of shape (B,)."""

    is_latent: bool = False

    def __init__(self, shape: tuple[int, ...], sigma_min: float, sigma_max: float) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.nfe = 0

    # -- the contract ---------------------------------------------------------------------------
    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """E[x0 | x] for a batch ``x`` of shape (B, *shape) at noise level ``sigma``."""
        sigma = self.check(x, sigma)
        self.nfe += 1
        return self._denoise(x, sigma)

    def score(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """grad log p_sigma(x) = (E[x0 | x] - x) / sigma^2 (Tweedie)."""
        sigma_b = self.check(x, sigma)
        self.nfe += 1
        return (self._denoise(x, sigma_b) - x) / sigma_view(sigma_b, x.dim()) ** 2

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """Image -> sampling space (latent priors only)."""
        raise PriorInputError(f"{type(self).__name__} is a pixel prior: it has no encoder")

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Sampling space -> image (latent priors only; differentiable)."""
        raise PriorInputError(f"{type(self).__name__} is a pixel prior: it has no decoder")

    def generator(self, z: torch.Tensor) -> torch.Tensor:
        """A deterministic noise-to-data map, for priors that define one."""
        raise PriorInputError(
            f"{type(self).__name__} defines no deterministic noise-to-data generator"
        )

    def reset_nfe(self) -> None:
        """Set the function-evaluation counter back to zero."""
        self.nfe = 0

    def _first_tensor(self) -> torch.Tensor | None:
        for tensor in self.parameters():
            return tensor
        return next(iter(self.buffers()), None)

    @property
    def device(self) -> torch.device:
        """Where the prior's weights (or buffers) live."""
        tensor = self._first_tensor()
        return torch.device("cpu") if tensor is None else tensor.device

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of the prior's weights (or buffers)."""
        tensor = self._first_tensor()
        return torch.float32 if tensor is None else tensor.dtype

    # -- validation ------------------------------------------------------------------------------
    def check(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """Validate ``x`` and return sigma as a (B,) tensor of x's dtype and device."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise PriorInputError(f"{name}: x must be a floating-point tensor")
        if x.dim() != len(self.shape) + 1 or tuple(x.shape[1:]) != self.shape:
            raise PriorInputError(
                f"{name}: x has shape {tuple(x.shape)}; expected (batch, "
                f"{', '.join(map(str, self.shape))})"
            )
        sigma_t = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if sigma_t.dim() == 0:
            sigma_t = sigma_t.expand(x.shape[0])
        if sigma_t.shape != (x.shape[0],):
            raise PriorInputError(
                f"{name}: sigma must be a number or a tensor of shape ({x.shape[0]},), "
                f"got shape {tuple(sigma_t.shape)}"
            )
        low, high = self.sigma_min * (1 - 1e-6), self.sigma_max * (1 + 1e-6)
        if not bool(torch.isfinite(sigma_t).all()) or bool(
            ((sigma_t < low) | (sigma_t > high)).any()
        ):
            raise PriorInputError(
                f"{name}: sigma must lie in [sigma_min, sigma_max] = [{self.sigma_min:g}, "
                f"{self.sigma_max:g}], got values in [{sigma_t.min().item():g}, "
                f"{sigma_t.max().item():g}]"
            )
        return sigma_t


def sigma_view(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a (B,) sigma to broadcast against a (B, ...) tensor of ``ndim`` dims."""
    return sigma.view(-1, *([1] * (ndim - 1)))


def check_finite_range(value: float, name: str) -> float:
    """A finite positive float or a clear error."""
    if not math.isfinite(value) or value <= 0:
        raise PriorInputError(f"{name} must be finite and > 0, got {value}")
    return float(value)
