"""Small instances of every registered operator, shared by the operator tests."""

from __future__ import annotations

import torch

import operators

IMAGE = (3, 32, 32)

# name -> keyword arguments of a small, fast instance (every registered name must appear here).
SMALL: dict[str, dict] = {
    "identity": {"shape": IMAGE},
    "hdr": {"shape": IMAGE},
    "inpaint_box": {"shape": IMAGE, "box": 12, "margin": 4},
    "inpaint_random": {"shape": IMAGE},
    "super_resolution": {"shape": IMAGE, "factor": 4},
    "gaussian_blur": {"shape": IMAGE, "kernel_size": 15, "std": 2.0},
    "motion_blur": {"shape": IMAGE, "kernel_size": 21},
    "phase_retrieval": {"shape": IMAGE},
    "nonlinear_blur": {
        "shape": IMAGE,
        "random_init": True,
        "nf": 8,
        "front_RBs": 1,
        "back_RBs": 1,
        "kernel_dim": 16,
    },
    "matrix": {},  # built from a seeded random matrix below
}

SEEDED = ("inpaint_box", "inpaint_random", "motion_blur", "nonlinear_blur")


def build_small(name: str, dtype: torch.dtype = torch.float64, **overrides) -> operators.Operator:
    """A small instance of ``name`` in ``dtype``."""
    params = {**SMALL[name], **overrides}
    if name == "matrix" and "A" not in params:
        params["A"] = torch.randn(5, 12, generator=torch.Generator().manual_seed(3))
    return operators.build(name, **params).to(dtype)


def random_input(
    op: operators.Operator, batch: int = 3, seed: int = 0, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """A batch uniform in [-1, 1] of the operator's input shape."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *op.input_shape, generator=gen, dtype=dtype) * 2 - 1


TINY_IMAGE = (2, 12, 12)
_TINY_OVERRIDES: dict[str, dict] = {"inpaint_box": {"box": 4, "margin": 2}}


def build_tiny(name: str, **overrides) -> operators.Operator:
    """A float64 instance on 2x12x12 images (288 unknowns), small enough to form densely."""
    if name == "matrix":
        return build_small(name, **overrides)
    return build_small(name, shape=TINY_IMAGE, **{**_TINY_OVERRIDES.get(name, {}), **overrides})
