"""Non-linear deblurring: A(x) = G(x, k), the bkse blur generator with a fixed kernel code.

The forward model of DPS and DAPS "nonlinear deblur" (docs/operators.md): the
KernelWizard network of Tran et al., CVPR 2021 (operators/kernel_wizard.py) with the official
``GOPRO_wVAE.pth`` weights and a kernel code k = 1.2 * randn(1, 512, 2, 2) drawn once with a
fixed seed. Images in [-1, 1] are mapped to [0, 1], blurred, mapped back and clamped to [-1, 1].
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from operators.base import Operator, OperatorInputError
from operators.kernel_wizard import KernelWizard, init_weights
from operators.random import make_generator, standard_normal

# Keys under which training frameworks nest a state dict; DPS/DAPS load the bare state dict.
_NESTED_STATE_KEYS = ("state_dict", "params", "model", "network")


class NonlinearBlur(Operator):
    """A(x) = clamp(2 G((x + 1) / 2, k) - 1, -1, 1) with the bkse KernelWizard G.

    The network is frozen (no parameter requires grad); ``forward`` stays differentiable in x.
    The kernel code ``kernel_code`` (a buffer, saved in ``state_dict``) has shape
    ``(1, kernel_dim, H' / 128, W' / 128)`` where H', W' are the image sides rounded up to
    multiples of 128: ``(1, 512, 2, 2)`` at the reference 256 x 256. Other sizes are
    replicate-padded to the next multiple of 128 before the network and cropped after it.
    To reproduce the DAPS measurement bit for bit, overwrite the buffer with its code
    (``1.2 * numpy.random.RandomState(0).randn(1, 512, 2, 2)``).

    Parameters
    ----------
    shape: image shape (3, H, W); the network is RGB.
    sigma: measurement noise standard deviation in [-1, 1] units.
    weights: path to the official ``GOPRO_wVAE.pth`` (or a state dict in the same layout);
        loaded with ``torch.load(weights_only=True)`` and ``strict=True``.
    random_init: build a randomly initialised network instead (tests only; not a blur model).
    seed: int or generator for the kernel code and, with ``random_init``, the weights.
    kernel_scale: scale of the Gaussian kernel code (1.2 in DPS/DAPS).
    nf, front_RBs, back_RBs, kernel_dim: KernelWizard sizes (official: 64, 10, 20, 512).
    """

    name = "nonlinear_blur"
    is_linear = False

    def __init__(
        self,
        shape: Sequence[int] = (3, 256, 256),
        sigma: float = 0.05,
        weights: str | os.PathLike[str] | None = None,
        random_init: bool = False,
        seed: int | torch.Generator | None = 0,
        kernel_scale: float = 1.2,
        nf: int = 64,
        front_RBs: int = 10,  # noqa: N803 - the bkse option name
        back_RBs: int = 20,  # noqa: N803 - the bkse option name
        kernel_dim: int = 512,
    ) -> None:
        super().__init__(shape, sigma)
        if len(self.input_shape) != 3 or self.input_shape[0] != 3:
            raise OperatorInputError(
                f"{self.name}: the bkse KernelWizard blurs RGB images; shape must be "
                f"(3, H, W), got {self.input_shape}"
            )
        sizes = {"nf": nf, "front_RBs": front_RBs, "back_RBs": back_RBs, "kernel_dim": kernel_dim}
        for key, value in sizes.items():
            low = 0 if key.endswith("RBs") else 1
            if not isinstance(value, int) or value < low:
                raise OperatorInputError(
                    f"{self.name}: {key} must be an integer >= {low}, got {value!r}"
                )
        if not math.isfinite(float(kernel_scale)):
            raise OperatorInputError(
                f"{self.name}: kernel_scale must be finite, got {kernel_scale!r}"
            )
        if weights is None and not random_init:
            raise OperatorInputError(
                f"{self.name}: needs the official GOPRO_wVAE.pth weights of bkse "
                "(https://github.com/VinAIResearch/blur-kernel-space-exploring, model zoo); "
                "pass weights=PATH, or random_init=True for tests only (a random network is not "
                "a blur model)"
            )
        if weights is not None and random_init:
            raise OperatorInputError(
                f"{self.name}: pass either weights=PATH or random_init=True, not both"
            )
        architecture = {
            "nf": nf,
            "front_blocks": front_RBs,
            "back_blocks": back_RBs,
            "kernel_dim": kernel_dim,
        }
        generator = make_generator(seed)
        multiple = KernelWizard.size_multiple
        _, height, width = self.input_shape
        self._pad = (-width % multiple, -height % multiple)  # right, bottom
        code_shape = (1, kernel_dim, math.ceil(height / multiple), math.ceil(width / multiple))
        code = float(kernel_scale) * standard_normal(code_shape, generator, device="cpu")
        self.register_buffer("kernel_code", code)
        if weights is None:
            self.blur_model = KernelWizard(**architecture)
            init_weights(self.blur_model, generator)
        else:
            state = read_weights(weights)
            with torch.device("meta"):
                self.blur_model = KernelWizard(**architecture)
            try:
                self.blur_model.load_state_dict(state, strict=True, assign=True)
            except RuntimeError as err:
                raise OperatorInputError(
                    f"{self.name}: the weights in {os.fspath(weights)} do not fit a KernelWizard "
                    f"with {sizes}; the official GOPRO_wVAE.pth needs the defaults "
                    f"(nf=64, front_RBs=10, back_RBs=20, kernel_dim=512). {err}"
                ) from err
        self.blur_model.requires_grad_(False)
        self.blur_model.eval()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        code = self.kernel_code
        sharp = (x.to(code.dtype) + 1.0) / 2.0
        pad_w, pad_h = self._pad
        if pad_w or pad_h:
            sharp = F.pad(sharp, (0, pad_w, 0, pad_h), mode="replicate")
        blurred = self.blur_model.adapt_kernel(sharp, code.expand(x.shape[0], -1, -1, -1))
        blurred = blurred[..., : x.shape[-2], : x.shape[-1]]
        return (blurred * 2.0 - 1.0).clamp(-1.0, 1.0).to(x.dtype)


def read_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The KernelWizard state dict in ``path`` as float32 CPU tensors; never unpickles code.

    Accepts the bare state dict of ``GOPRO_wVAE.pth`` (what DPS and DAPS load), a state dict
    nested under one of ``state_dict``/``params``/``model``/``network``, and keys prefixed with
    ``module.`` (``nn.DataParallel``), which bkse's own loader strips too.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"nonlinear_blur: weights file {file} not found; download GOPRO_wVAE.pth from "
            "the bkse model zoo (https://github.com/VinAIResearch/blur-kernel-space-exploring) "
            "and pass its path as weights="
        )
    checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, Mapping):
        for key in _NESTED_STATE_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in checkpoint.values()
    ):
        raise OperatorInputError(
            f"nonlinear_blur: {file} does not hold a state dict of tensors (the format of "
            "GOPRO_wVAE.pth)"
        )
    return {
        str(k).removeprefix("module."): v.float() if v.is_floating_point() else v
        for k, v in checkpoint.items()
    }
