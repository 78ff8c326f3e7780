"""Randomness through explicit generators only: draws happen on the generator's device.

Sampling on the generator's device and then moving the result makes a seeded draw identical
whatever device the consumer runs on (CPU generator -> same numbers on CPU and CUDA).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def make_generator(seed: int | torch.Generator | None) -> torch.Generator:
    """A CPU generator from an int seed (or the generator itself); ``None`` means seed 0."""
    if isinstance(seed, torch.Generator):
        return seed
    gen = torch.Generator()
    gen.manual_seed(0 if seed is None else int(seed))
    return gen


def _source_device(generator: torch.Generator | None) -> torch.device:
    return torch.device("cpu") if generator is None else generator.device


def standard_normal(
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """N(0, I) of ``shape`` drawn from ``generator`` and moved to ``device``/``dtype``."""
    z = torch.randn(tuple(shape), generator=generator, device=_source_device(generator))
    return z.to(device=device or z.device, dtype=dtype)


def uniform(
    shape: Sequence[int],
    generator: torch.Generator | None,
    low: float = 0.0,
    high: float = 1.0,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """U(low, high) of ``shape`` from ``generator`` on the generator's device."""
    u = torch.rand(tuple(shape), generator=generator, device=_source_device(generator), dtype=dtype)
    return low + (high - low) * u
