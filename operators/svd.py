"""Matrix-free singular value decompositions A = U diag(s) V^T of the cheap linear operators.

Samplers that work in the spectral basis of A (MCGdiff, DDRM, DDNM) need V^T x, U^T y and the
singular values without ever forming A. ``svd_of(operator)`` gives them where they are cheap:

- ``matrix``: one ``torch.linalg.svd`` of the dense A (float64);
- ``inpaint_box``, ``inpaint_random``: A = mask * x is diagonal: U = V = I and s = the mask
  (1 on observed pixels, 0 on masked ones);
- ``identity``: U = V = I, s = 1;
- ``super_resolution`` (bicubic and average): A x = W_h x W_w^T per channel with two small
  matrices, so A = (W_h kron W_w) and its SVD is the Kronecker product of the SVDs of W_h and
  W_w: V^T x = V_h^T x V_w, s_(a, b) = s_h[a] s_w[b];
- ``gaussian_blur`` (any ``Blur`` whose kernel is a rank-1 outer product k = k_r k_c^T):
  reflection padding and correlation act on rows and columns separately, so A x = B_h x B_w^T
  with B_h = C_h P_h (P_h: the padding's index gather, C_h: the valid correlation with k_r), and
  the SVD is again a Kronecker product. A kernel that is not rank-1 to round-off (a motion
  blur) is refused.

Every other operator (phase retrieval, HDR, the nonlinear blur, motion blur, stacks of several
problems' operators) is refused with an ``OperatorInputError`` that names the supported ones.

Layout. Spectral coefficients c = V^T x have the image's shape ``input_shape``; each factored
axis of length n with a factor W of shape (m, n) keeps its r = min(m, n) singular directions in
the first r slots, so ``singular_values`` (float64, ``input_shape``) is zero outside them (and
on masked pixels). ``u_t(y)`` = U^T y lands in those slots (zeros elsewhere) and ``u(c)`` reads
them, so A x = u(s * v_t(x)) and A^T y = v(s * u_t(y)). U has orthonormal columns: u(u_t(y)) is
the projection of y onto range(U) (y itself when m <= n on every axis).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from operators.base import LinearOperator, Operator, OperatorInputError
from operators.convolution import Blur, reflect_indices
from operators.masks import BoxInpainting, RandomInpainting
from operators.matrix import MatrixOperator
from operators.pointwise import Identity
from operators.resize import SuperResolution
from operators.stacked import StackedOperator

F64 = torch.float64
SUPPORTED = (
    "matrix",
    "inpaint_box",
    "inpaint_random",
    "identity",
    "super_resolution",
    "gaussian_blur (any blur with a separable, rank-1 kernel)",
)


@dataclass(frozen=True)
class AxisSVD:
    """The SVD W = U_r diag(s) V^T of one axis's (m, n) factor: ``u`` (m, r) with orthonormal
    columns, ``s`` (r,) non-negative, ``v`` (n, n) orthogonal, r = min(m, n); float64."""

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor

    @staticmethod
    def of(matrix: torch.Tensor) -> AxisSVD:
        """The SVD of ``matrix``; singular values below round-off are set to exactly zero."""
        w = matrix.detach().to(F64)
        u, s, vh = torch.linalg.svd(w, full_matrices=True)
        r = s.shape[0]
        floor = float(s.max()) * max(w.shape) * torch.finfo(F64).eps if r else 0.0
        s = torch.where(s > floor, s, torch.zeros_like(s))
        return AxisSVD(u[:, :r].contiguous(), s, vh.T.contiguous())

    @property
    def rank_slots(self) -> int:
        return self.s.shape[0]


class OperatorSVD:
    """A = U diag(s) V^T of one linear operator, applied matrix-free (module docstring).

    ``axes``: the SVDs of the factors acting on the last ``len(axes)`` dimensions (the other
    dimensions, e.g. channels, are left alone); ``weight``: an elementwise factor on the
    spectral coefficients (the inpainting mask), broadcastable to ``input_shape``.
    """

    def __init__(
        self,
        name: str,
        input_shape: Sequence[int],
        output_shape: Sequence[int],
        axes: Sequence[AxisSVD] = (),
        weight: torch.Tensor | None = None,
    ) -> None:
        self.name = name
        self.input_shape = tuple(int(n) for n in input_shape)
        self.output_shape = tuple(int(n) for n in output_shape)
        self.axes = tuple(axes)
        first = len(self.input_shape) - len(self.axes)
        values = torch.ones(self.input_shape, dtype=F64)
        for i, axis in enumerate(self.axes):
            n = self.input_shape[first + i]
            if axis.v.shape != (n, n) or axis.u.shape[0] != self.output_shape[first + i]:
                raise OperatorInputError(
                    f"{name}: axis factor of shape {tuple(axis.u.shape)} x "
                    f"{tuple(axis.v.shape)} does not fit {self.input_shape} -> "
                    f"{self.output_shape}"
                )
            padded = torch.zeros(n, dtype=F64)
            padded[: axis.rank_slots] = axis.s
            shape = [1] * len(self.input_shape)
            shape[first + i] = n
            values = values * padded.view(shape)
        if weight is not None:
            values = values * weight.detach().to(F64)
        self.singular_values = values.expand(self.input_shape).contiguous()

    @property
    def observed(self) -> torch.Tensor:
        """Spectral coordinates with a nonzero singular value (boolean, ``input_shape``)."""
        return self.singular_values > 0

    # -- the four maps -----------------------------------------------------------------------
    def v_t(self, x: torch.Tensor) -> torch.Tensor:
        """Spectral coefficients V^T x of a batch ``x`` of shape (B, *input_shape)."""
        self._check(x, self.input_shape, "v_t input")
        for dim, axis in self._dims():
            x = _along(x, axis.v.T, dim)
        return x

    def v(self, c: torch.Tensor) -> torch.Tensor:
        """The image V c of spectral coefficients ``c`` (B, *input_shape): v(v_t(x)) = x."""
        self._check(c, self.input_shape, "v input")
        for dim, axis in self._dims():
            c = _along(c, axis.v, dim)
        return c

    def u_t(self, y: torch.Tensor) -> torch.Tensor:
        """U^T y of measurements (B, *output_shape), in the spectral layout (B, *input_shape)."""
        self._check(y, self.output_shape, "u_t input")
        for dim, axis in self._dims():
            y = _along(y, axis.u.T, dim)
            pad = self.input_shape[dim - 1] - axis.rank_slots
            if pad:
                y = torch.cat([y, y.new_zeros(*y.shape[:dim], pad, *y.shape[dim:][1:])], dim)
        return y

    def u(self, c: torch.Tensor) -> torch.Tensor:
        """U c of spectral-layout coefficients (B, *input_shape), shape (B, *output_shape)."""
        self._check(c, self.input_shape, "u input")
        for dim, axis in self._dims():
            c = _along(c.narrow(dim, 0, axis.rank_slots), axis.u, dim)
        return c

    def _dims(self) -> list[tuple[int, AxisSVD]]:
        """(batch-tensor dimension, axis SVD) of each factored axis."""
        first = len(self.input_shape) - len(self.axes) + 1  # +1: the batch dimension
        return [(first + i, axis) for i, axis in enumerate(self.axes)]

    def _check(self, t: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
        if t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != shape:
            raise OperatorInputError(
                f"{self.name} SVD: {what} has shape {tuple(t.shape)}; expected (B, "
                f"{', '.join(map(str, shape))})"
            )


def _along(t: torch.Tensor, matrix: torch.Tensor, dim: int) -> torch.Tensor:
    """``matrix`` (k, n) applied to dimension ``dim`` (length n) of ``t``."""
    moved = t.movedim(dim, -1) @ matrix.T.to(dtype=t.dtype, device=t.device)
    return moved.movedim(-1, dim)


# -- the supported operators -------------------------------------------------------------------
def svd_of(operator: Operator) -> OperatorSVD:
    """The matrix-free SVD of ``operator``, or an ``OperatorInputError`` naming the supported
    operators (module docstring)."""
    name = getattr(operator, "name", type(operator).__name__)
    if isinstance(operator, StackedOperator):
        raise OperatorInputError(
            f"svd_of: {name} holds the rows of several problems (stack_rows); take the SVD of "
            "each problem's operator (operator.row_groups())"
        )
    shape_in, shape_out = operator.input_shape, operator.output_shape
    if isinstance(operator, MatrixOperator):
        return OperatorSVD(name, shape_in, shape_out, [AxisSVD.of(operator.A)])
    if isinstance(operator, BoxInpainting | RandomInpainting):
        return OperatorSVD(name, shape_in, shape_out, weight=operator.mask)
    if isinstance(operator, Identity):
        return OperatorSVD(name, shape_in, shape_out)
    if isinstance(operator, SuperResolution):
        axes = [AxisSVD.of(operator.rows), AxisSVD.of(operator.cols)]
        return OperatorSVD(name, shape_in, shape_out, axes)
    if isinstance(operator, Blur):
        k_rows, k_cols = separable_factors(operator.kernel, name)
        _, height, width = shape_in
        axes = [
            AxisSVD.of(padded_correlation(k_rows, height, operator.pad)),
            AxisSVD.of(padded_correlation(k_cols, width, operator.pad)),
        ]
        return OperatorSVD(name, shape_in, shape_out, axes)
    kind = "linear" if isinstance(operator, LinearOperator) else "nonlinear"
    raise OperatorInputError(
        f"svd_of: no cheap SVD for the {kind} operator {name!r}; supported: {', '.join(SUPPORTED)}"
    )


def separable_factors(kernel: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(k_r, k_c) with kernel = outer(k_r, k_c), float64, or an error if it is not rank-1 to
    the round-off of the kernel's dtype."""
    k = kernel.detach().to(F64)
    u, s, vh = torch.linalg.svd(k)
    tolerance = 100 * k.shape[0] * torch.finfo(kernel.dtype).eps
    if s.shape[0] > 1 and float(s[1]) > tolerance * float(s[0]):
        raise OperatorInputError(
            f"svd_of: the {name} kernel is not separable (second singular value "
            f"{float(s[1] / s[0]):.2e} of the first; a rank-1 kernel is needed), so its SVD is "
            f"not cheap; supported: {', '.join(SUPPORTED)}"
        )
    scale = math.sqrt(float(s[0]))
    return scale * u[:, 0], scale * vh[0]


def padded_correlation(taps: torch.Tensor, size: int, pad: int) -> torch.Tensor:
    """The (size, size) matrix of reflection padding by ``pad`` then valid correlation with the
    1-D ``taps`` (length 2 pad + 1): row i is sum_a taps[a] P[i + a], P the padding's gather."""
    taps = taps.to(F64)
    correlation = torch.zeros(size, size + 2 * pad, dtype=F64)
    rows = torch.arange(size)
    for a in range(taps.shape[0]):
        correlation[rows, rows + a] = taps[a]
    source = reflect_indices(size, pad)
    return torch.zeros(size, size, dtype=F64).index_add_(1, source, correlation)
