"""The Operator contract: y = A(x) + sigma * n with Gaussian noise (docs/operators.md).

Every forward model is a ``torch.nn.Module`` built for one input shape. Random parts (masks,
kernels) are drawn once at construction from an explicit generator or seed and stored as
buffers, so ``state_dict`` restores them exactly. Batch items never interact.

A batch may hold the rows of several problems (images) whose random parts differ:
``operators.stack_rows`` makes one operator whose rows each use their own problem's operator
(``row_count`` rows exactly); ``take_rows`` restricts it to some rows and ``row_groups`` lists
which operator serves which rows. A plain operator serves every row of any batch the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from operators.random import standard_normal


class OperatorInputError(ValueError):
    """Raised for an input that does not fit the operator; the message names the fix."""


class Operator(nn.Module):
    """A forward model A with additive Gaussian noise of standard deviation ``sigma``.

    Subclasses implement ``_forward(x)`` on a batch of shape ``(B, *input_shape)`` and set
    ``output_shape``.
    """

    name: str = "operator"
    is_linear: bool = False
    # (registered name, build parameters), set by ``operators.build``; None when built directly
    build_spec: tuple[str, dict[str, Any]] | None = None
    # the exact batch size of an operator whose rows belong to different problems; None: any
    row_count: int | None = None

    def __init__(self, input_shape: Sequence[int], sigma: float = 0.05) -> None:
        super().__init__()
        input_shape = tuple(int(s) for s in input_shape)
        if not input_shape or any(s <= 0 for s in input_shape):
            raise OperatorInputError(
                f"{self.name}: shape must be a tuple of positive sizes, got {input_shape}"
            )
        self.input_shape: tuple[int, ...] = input_shape
        self.sigma = check_sigma(sigma, self.name)
        self.output_shape: tuple[int, ...] = input_shape

    # -- the contract -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A(x) for a batch ``x`` of shape ``(B, *input_shape)``; differentiable."""
        self.check_input(x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def measure(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A(x) + sigma * n with n ~ N(0, I) drawn from ``generator``."""
        y = self(x)
        if self.sigma == 0.0:
            return y
        return y + self.sigma * standard_normal(y.shape, generator, y.device, y.dtype)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample squared residual ||A(x) - y||^2, shape ``(B,)``."""
        y = self.check_measurement(y, batch=x.shape[0] if x.dim() > 0 else None)
        residual = self(x) - y
        return residual.flatten(1).pow(2).sum(dim=1)

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Gaussian log p(y | x) per sample, shape ``(B,)``; needs ``sigma > 0``."""
        if self.sigma == 0.0:
            raise OperatorInputError(
                f"{self.name}: log_likelihood needs sigma > 0 (the noise-free likelihood is a "
                "delta); build the operator with sigma > 0"
            )
        m = math.prod(self.output_shape)
        return -self.loss(x, y) / (2 * self.sigma**2) - 0.5 * m * math.log(
            2 * math.pi * self.sigma**2
        )

    # -- rows of several problems ----------------------------------------------------------------
    def take_rows(self, index: Sequence[int] | torch.Tensor) -> Operator:
        """The operator of the rows ``index`` of a batch; a plain operator serves every row."""
        return self

    def row_groups(self) -> list[tuple[Operator, torch.Tensor | None]]:
        """(operator, row indices) per problem of the batch; ``None`` stands for every row."""
        return [(self, None)]

    # -- validation ---------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``OperatorInputError`` unless ``x`` is a finite float batch of input_shape."""
        _check_batch(x, self.input_shape, f"{self.name} input x", "input_shape")

    def check_measurement(self, y: torch.Tensor, batch: int | None = None) -> torch.Tensor:
        """Validate a measurement batch (or a single unbatched one, which is broadcast)."""
        if isinstance(y, torch.Tensor) and tuple(y.shape) == self.output_shape:
            y = y.unsqueeze(0)
        _check_batch(y, self.output_shape, f"{self.name} measurement y", "output_shape")
        if batch is not None and y.shape[0] not in (1, batch):
            raise OperatorInputError(
                f"{self.name}: y has batch size {y.shape[0]} but x has {batch}; pass one y per "
                "sample or a single y"
            )
        return y

    def extra_repr(self) -> str:
        return (
            f"input_shape={self.input_shape}, output_shape={self.output_shape}, sigma={self.sigma}"
        )


class LinearOperator(Operator):
    """A linear forward model: adds ``adjoint`` and a matrix-free pseudo-inverse."""

    is_linear = True

    def adjoint(self, v: torch.Tensor) -> torch.Tensor:
        """A^T v for a batch ``v`` of shape ``(B, *output_shape)``."""
        _check_batch(v, self.output_shape, f"{self.name} adjoint input", "output_shape")
        return self._adjoint(v)

    def _adjoint(self, v: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """A^T A x."""
        return self._adjoint(self._forward(x))

    def pseudo_inverse(
        self,
        y: torch.Tensor,
        damping: float = 0.0,
        x0: torch.Tensor | None = None,
        tol: float = 1e-6,
        max_iter: int = 200,
    ) -> torch.Tensor:
        """Least-squares solution of min ||A x - y||^2 + damping ||x - x0||^2 by CG.

        With ``damping = 0`` and ``x0 = None`` CG on the normal equations started at zero stays
        in range(A^T), so it converges to the minimum-norm solution A^+ y.
        """
        from operators.linalg import cg

        y = self.check_measurement(y)
        rhs = self._adjoint(y)
        if damping < 0:
            raise OperatorInputError(f"{self.name}: damping must be >= 0, got {damping}")
        if x0 is not None:
            self.check_input(x0)
            rhs = rhs + damping * x0
        return cg(lambda x: self.normal(x) + damping * x, rhs, x0=x0, tol=tol, max_iter=max_iter)


def check_sigma(sigma: float, name: str) -> float:
    """Validate a noise level: a finite float >= 0."""
    try:
        value = float(sigma)
    except (TypeError, ValueError) as err:
        raise OperatorInputError(f"{name}: sigma must be a number >= 0, got {sigma!r}") from err
    if not math.isfinite(value) or value < 0:
        raise OperatorInputError(
            f"{name}: sigma is the noise standard deviation and must be finite and >= 0, "
            f"got {sigma!r}"
        )
    return value


def _check_batch(t: torch.Tensor, shape: tuple[int, ...], what: str, attr: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise OperatorInputError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise OperatorInputError(f"{what} must be a floating-point tensor, got dtype {t.dtype}")
    if t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != shape:
        hint = ""
        if t.dim() == len(shape) + 1 and len(shape) == 3 and t.shape[1] != shape[0]:
            hint = f" (channel count {t.shape[1]} != {shape[0]})"
        raise OperatorInputError(
            f"{what} has shape {tuple(t.shape)}{hint}; expected (batch, *{attr}) = "
            f"(B, {', '.join(str(s) for s in shape)}). Build the operator with "
            f"shape={tuple(t.shape[1:])} or reshape the input"
        )
    if not bool(torch.isfinite(t).all()):
        raise OperatorInputError(f"{what} contains NaN or infinite values")
