"""Fourier phase retrieval: y = |F pad((x + 1) / 2)| (DAPS protocol, oversampling 2.0).

The image is mapped to [0, 1], zero-padded by int(oversample / 8 * size) on each side
(64 for 256 at oversampling 2) and transformed by a centred orthonormal 2-D FFT per channel;
the measurement is the magnitude. Symmetric padding makes |F x| exactly invariant under the
180-degree flip of x, the ambiguity every solver faces on this task.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from operators.base import Operator, OperatorInputError


class PhaseRetrieval(Operator):
    """Magnitude of the oversampled Fourier transform."""

    name = "phase_retrieval"

    def __init__(
        self, shape: Sequence[int] = (3, 256, 256), sigma: float = 0.05, oversample: float = 2.0
    ) -> None:
        super().__init__(shape, sigma)
        if len(self.input_shape) != 3:
            raise OperatorInputError(
                f"phase_retrieval: shape must be (channels, height, width), got {self.input_shape}"
            )
        if not oversample >= 0:
            raise OperatorInputError(f"phase_retrieval: oversample must be >= 0, got {oversample}")
        channels, height, width = self.input_shape
        self.oversample = float(oversample)
        self.pad_h = int(oversample / 8.0 * height)
        self.pad_w = int(oversample / 8.0 * width)
        self.output_shape = (channels, height + 2 * self.pad_h, width + 2 * self.pad_w)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad((x + 1.0) / 2.0, (self.pad_w, self.pad_w, self.pad_h, self.pad_h))
        spectrum = torch.fft.fftshift(torch.fft.fft2(padded, norm="ortho"), dim=(-2, -1))
        return spectrum.abs()
