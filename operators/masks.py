"""Inpainting operators y = mask * x (DAPS/ReSample protocol, docs/operators.md).

The mask is drawn once at construction from an explicit seed or generator and kept as a buffer,
so ``state_dict`` restores it exactly. One mask serves every image and channel (DAPS).
Masked-out entries of y are zero, so A is an orthogonal projection and A^T = A.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from operators.base import LinearOperator, OperatorInputError
from operators.random import make_generator, uniform


class _MaskOperator(LinearOperator):
    """Shared part: y = mask * x with a (1, H, W) mask broadcast over channels."""

    def __init__(self, shape: Sequence[int], sigma: float) -> None:
        super().__init__(shape, sigma)
        if len(self.input_shape) != 3:
            raise OperatorInputError(
                f"{self.name}: shape must be (channels, height, width), got {self.input_shape}"
            )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask.to(x.dtype)

    def _adjoint(self, v: torch.Tensor) -> torch.Tensor:
        return v * self.mask.to(v.dtype)


class BoxInpainting(_MaskOperator):
    """Mask out one ``box`` x ``box`` square whose top-left corner is uniform in
    [margin, size - margin - box] on each axis (DAPS: 128 box, margin 32, corner in [32, 96))."""

    name = "inpaint_box"

    def __init__(
        self,
        shape: Sequence[int] = (3, 256, 256),
        sigma: float = 0.05,
        box: int | tuple[int, int] = 128,
        margin: int | tuple[int, int] = 32,
        seed: int | torch.Generator | None = 0,
    ) -> None:
        super().__init__(shape, sigma)
        _, height, width = self.input_shape
        box_h, box_w = (box, box) if isinstance(box, int) else box
        margin_h, margin_w = (margin, margin) if isinstance(margin, int) else margin
        generator = make_generator(seed)
        corner = []
        for size, b, m, axis in (
            (height, box_h, margin_h, "height"),
            (width, box_w, margin_w, "width"),
        ):
            high = size - m - b  # exclusive upper bound of the corner, as in the reference
            if b <= 0 or m < 0 or high <= m:
                raise OperatorInputError(
                    f"inpaint_box: a box of {b} with margin {m} does not fit the {axis} {size}; "
                    f"need 0 < box and margin + box < {size} - margin"
                )
            corner.append(int(torch.randint(m, high, (1,), generator=generator).item()))
        mask = torch.ones(1, height, width)
        mask[:, corner[0] : corner[0] + box_h, corner[1] : corner[1] + box_w] = 0.0
        self.register_buffer("mask", mask)


class RandomInpainting(_MaskOperator):
    """Drop a fraction p ~ U(p_low, p_high) of pixels, the same pixels in every channel
    (DAPS: p ~ U(0.70, 0.71))."""

    name = "inpaint_random"

    def __init__(
        self,
        shape: Sequence[int] = (3, 256, 256),
        sigma: float = 0.05,
        drop: float | tuple[float, float] = (0.70, 0.71),
        seed: int | torch.Generator | None = 0,
    ) -> None:
        super().__init__(shape, sigma)
        low, high = (drop, drop) if isinstance(drop, int | float) else drop
        if not 0.0 <= low <= high < 1.0:
            raise OperatorInputError(
                f"inpaint_random: drop fraction must satisfy 0 <= low <= high < 1, got {drop}"
            )
        _, height, width = self.input_shape
        generator = make_generator(seed)
        fraction = float(uniform((1,), generator, low, high).item())
        scores = uniform((height * width,), generator)
        n_drop = round(fraction * height * width)
        mask = torch.ones(height * width)
        mask[torch.argsort(scores)[:n_drop]] = 0.0
        self.register_buffer("mask", mask.view(1, height, width))
        self.drop_fraction = fraction
