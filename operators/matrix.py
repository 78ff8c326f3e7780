"""Dense linear operator on vectors, y = A x (the Gaussian-mixture benchmark's measurement)."""

from __future__ import annotations

import torch

from operators.base import LinearOperator, OperatorInputError


class MatrixOperator(LinearOperator):
    """y = A x for x of shape (d,) and a dense A of shape (d_y, d), stored in the state_dict."""

    name = "matrix"

    def __init__(self, A: torch.Tensor, sigma: float = 0.05) -> None:  # noqa: N803 (A as in papers)
        if not isinstance(A, torch.Tensor) or A.dim() != 2 or not A.is_floating_point():
            raise OperatorInputError(
                "matrix: A must be a 2-D floating-point torch.Tensor of shape (d_y, d), got "
                f"{getattr(A, 'shape', type(A).__name__)}"
            )
        if not bool(torch.isfinite(A).all()):
            raise OperatorInputError("matrix: A contains NaN or infinite values")
        super().__init__((A.shape[1],), sigma)
        self.output_shape = (A.shape[0],)
        self.register_buffer("A", A.detach().clone())

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.A.to(x.dtype).T

    def _adjoint(self, v: torch.Tensor) -> torch.Tensor:
        return v @ self.A.to(v.dtype)
