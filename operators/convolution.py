"""Blur operators: y = k * reflect_pad(x), per channel (DAPS: 61x61 kernel, reflection pad 30).

Two exact implementations of the same linear map: direct convolution (``F.conv2d``) and FFT
convolution. The FFT path correlates the padded image with the kernel on a grid of the padded
size; the valid output never wraps around, so it equals the direct result to rounding, and
large kernels (61x61) run many times faster. Reflection padding is an index gather, so its
adjoint is the matching scatter-add, and the whole operator has an exact adjoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from operators.base import LinearOperator, OperatorInputError
from operators.motion_kernel import motion_kernel
from operators.random import make_generator

_METHODS = ("auto", "fft", "direct")
FFT_MIN_KERNEL = 16  # "auto" switches to FFT at this kernel size (see benchmarks/operators.py)


def reflect_indices(size: int, pad: int) -> torch.Tensor:
    """Source index of each position of a reflection-padded axis (no edge repeat, as F.pad)."""
    k = torch.arange(-pad, size + pad)
    k = torch.where(k < 0, -k, k)
    return torch.where(k >= size, 2 * (size - 1) - k, k)


def gaussian_kernel(size: int, std: float) -> torch.Tensor:
    """A normalised ``size x size`` Gaussian kernel (float64) centred on the middle pixel."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(offsets**2) / (2 * std**2))
    kernel = torch.outer(g, g)
    return kernel / kernel.sum()


class Blur(LinearOperator):
    """Per-channel correlation with a fixed odd-sized kernel after reflection padding."""

    name = "blur"

    def __init__(
        self,
        kernel: torch.Tensor,
        shape: Sequence[int] = (3, 256, 256),
        sigma: float = 0.05,
        method: str = "auto",
    ) -> None:
        super().__init__(shape, sigma)
        if len(self.input_shape) != 3:
            raise OperatorInputError(
                f"{self.name}: shape must be (channels, height, width), got {self.input_shape}"
            )
        if method not in _METHODS:
            raise OperatorInputError(
                f"{self.name}: method must be one of {_METHODS}, got {method!r}"
            )
        if kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] % 2 == 0:
            raise OperatorInputError(
                f"{self.name}: the kernel must be square with an odd size, "
                f"got {tuple(kernel.shape)}"
            )
        _, height, width = self.input_shape
        self.pad = kernel.shape[0] // 2
        if self.pad >= min(height, width):
            raise OperatorInputError(
                f"{self.name}: a {kernel.shape[0]}x{kernel.shape[0]} kernel needs reflection "
                f"padding {self.pad}, which must be smaller than the image ({height}x{width}); "
                "choose kernel_size < 2 * min(height, width)"
            )
        if method == "auto":
            method = "fft" if kernel.shape[0] >= FFT_MIN_KERNEL else "direct"
        self.method = method
        self.register_buffer("kernel", kernel.detach().clone())
        self.register_buffer("rows", reflect_indices(height, self.pad), persistent=False)
        self.register_buffer("cols", reflect_indices(width, self.pad), persistent=False)

    # -- padding and its adjoint ---------------------------------------------------------------
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(-2, self.rows).index_select(-1, self.cols)

    def _pad_adjoint(self, v: torch.Tensor) -> torch.Tensor:
        _, height, width = self.input_shape
        rows = v.new_zeros(*v.shape[:-2], height, v.shape[-1]).index_add_(-2, self.rows, v)
        return rows.new_zeros(*v.shape[:-2], height, width).index_add_(-1, self.cols, rows)

    # -- correlation and its adjoint --------------------------------------------------------
    def _padded_grid(self) -> tuple[int, int]:
        _, height, width = self.input_shape
        return height + 2 * self.pad, width + 2 * self.pad

    def _kernel_spectrum(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.fft.rfft2(self.kernel.to(dtype), s=self._padded_grid())

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        _, height, width = self.input_shape
        padded = self._pad(x)
        if self.method == "direct":
            flat = padded.reshape(-1, 1, *padded.shape[-2:])
            out = F.conv2d(flat, self.kernel.to(x.dtype)[None, None])
            return out.view(x.shape)
        grid = self._padded_grid()
        spectrum = torch.fft.rfft2(padded, s=grid) * self._kernel_spectrum(x.dtype).conj()
        return torch.fft.irfft2(spectrum, s=grid)[..., :height, :width]

    def _adjoint(self, v: torch.Tensor) -> torch.Tensor:
        if self.method == "direct":
            flat = v.reshape(-1, 1, *v.shape[-2:])
            padded = F.conv_transpose2d(flat, self.kernel.to(v.dtype)[None, None])
            padded = padded.view(*v.shape[:-2], *padded.shape[-2:])
        else:
            grid = self._padded_grid()
            spectrum = torch.fft.rfft2(v, s=grid) * self._kernel_spectrum(v.dtype)
            padded = torch.fft.irfft2(spectrum, s=grid)
        return self._pad_adjoint(padded)


def _check_kernel_size(name: str, kernel_size: int) -> int:
    if int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0:
        raise OperatorInputError(
            f"{name}: kernel_size must be a positive odd integer, got {kernel_size}"
        )
    return int(kernel_size)


class GaussianBlur(Blur):
    """Gaussian deblurring task: 61x61 kernel, standard deviation 3 (DAPS)."""

    name = "gaussian_blur"

    def __init__(
        self,
        shape: Sequence[int] = (3, 256, 256),
        sigma: float = 0.05,
        kernel_size: int = 61,
        std: float = 3.0,
        method: str = "auto",
    ) -> None:
        kernel_size = _check_kernel_size(self.name, kernel_size)
        if not (math.isfinite(std) and std > 0):
            raise OperatorInputError(f"gaussian_blur: std must be > 0, got {std}")
        self.std = float(std)
        super().__init__(gaussian_kernel(kernel_size, std), shape, sigma, method)


class MotionBlur(Blur):
    """Motion deblurring task: a 61x61 random-trajectory kernel of intensity 0.5 (DAPS)."""

    name = "motion_blur"

    def __init__(
        self,
        shape: Sequence[int] = (3, 256, 256),
        sigma: float = 0.05,
        kernel_size: int = 61,
        intensity: float = 0.5,
        seed: int | torch.Generator | None = 0,
        method: str = "auto",
    ) -> None:
        kernel_size = _check_kernel_size(self.name, kernel_size)
        if not 0.0 <= intensity <= 1.0:
            raise OperatorInputError(f"motion_blur: intensity must be in [0, 1], got {intensity}")
        self.intensity = float(intensity)
        kernel = motion_kernel(kernel_size, intensity, make_generator(seed))
        super().__init__(kernel, shape, sigma, method)
