"""Pointwise operators: identity (denoising) and HDR clipping (DAPS: y = clip(2x, -1, 1))."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from operators.base import LinearOperator, Operator, OperatorInputError


class Identity(LinearOperator):
    """A = I: plain denoising."""

    name = "identity"

    def __init__(self, shape: Sequence[int] = (3, 256, 256), sigma: float = 0.05) -> None:
        super().__init__(shape, sigma)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    def _adjoint(self, v: torch.Tensor) -> torch.Tensor:
        return v.clone()


class HighDynamicRange(Operator):
    """HDR reconstruction: y = clip(factor * x, -1, 1) (DAPS reference, factor 2)."""

    name = "hdr"

    def __init__(
        self, shape: Sequence[int] = (3, 256, 256), sigma: float = 0.05, factor: float = 2.0
    ) -> None:
        super().__init__(shape, sigma)
        if not factor > 0:
            raise OperatorInputError(f"hdr: factor must be > 0, got {factor}")
        self.factor = float(factor)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(self.factor * x, -1.0, 1.0)
