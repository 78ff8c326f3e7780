"""Super-resolution: y = downsample(x) by an integer factor, as a separable linear map.

Modes: ``bicubic`` (torch's cubic kernel with antialiasing, the DAPS/ReSample protocol) and
``average`` (adaptive average pooling, the noise-space Langevin paper). Both act on rows and
columns independently, so A x = W_h x W_w^T with two small matrices taken from torch's own
resampling of unit vectors; the adjoint is W_h^T v W_w, exact to floating-point rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from operators.base import LinearOperator, OperatorInputError

_MODES = ("bicubic", "average")


def resampling_matrix(size_in: int, size_out: int, mode: str) -> torch.Tensor:
    """The (size_out, size_in) matrix of 1-D resampling in ``mode``, in float64."""
    # Unit vectors along height, two columns wide: torch's antialiased bicubic takes another
    # code path for width-1 inputs whose result differs from the 2-D resize, so avoid width 1.
    basis = (
        torch.eye(size_in, dtype=torch.float64).view(size_in, 1, size_in, 1).expand(-1, -1, -1, 2)
    )
    if mode == "bicubic":
        out = F.interpolate(
            basis, size=(size_out, 2), mode="bicubic", antialias=True, align_corners=False
        )
    elif mode == "average":
        out = F.adaptive_avg_pool2d(basis, (size_out, 2))
    else:
        raise OperatorInputError(f"super_resolution: mode must be one of {_MODES}, got {mode!r}")
    return out[..., 0].reshape(size_in, size_out).T.contiguous()


class SuperResolution(LinearOperator):
    """Downsampling by ``factor`` (DAPS: x4 bicubic, 256 -> 64)."""

    name = "super_resolution"

    def __init__(
        self,
        shape: Sequence[int] = (3, 256, 256),
        sigma: float = 0.05,
        factor: int = 4,
        mode: str = "bicubic",
    ) -> None:
        super().__init__(shape, sigma)
        if len(self.input_shape) != 3:
            raise OperatorInputError(
                f"super_resolution: shape must be (channels, height, width), got {self.input_shape}"
            )
        channels, height, width = self.input_shape
        if int(factor) != factor or factor < 1 or height % factor or width % factor:
            raise OperatorInputError(
                f"super_resolution: factor must be a positive integer dividing height {height} "
                f"and width {width}, got {factor}"
            )
        self.factor = int(factor)
        self.mode = mode
        self.output_shape = (channels, height // self.factor, width // self.factor)
        self.register_buffer("rows", resampling_matrix(height, self.output_shape[1], mode))
        self.register_buffer("cols", resampling_matrix(width, self.output_shape[2], mode))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, cols = self.rows.to(x.dtype), self.cols.to(x.dtype)
        return rows @ x @ cols.T

    def _adjoint(self, v: torch.Tensor) -> torch.Tensor:
        rows, cols = self.rows.to(v.dtype), self.cols.to(v.dtype)
        return rows.T @ v @ cols
