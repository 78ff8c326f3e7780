"""Random motion-blur kernels: a random camera trajectory, rasterised and normalised.

Our implementation of the trajectory model used by the DAPS/DPS motion-deblur task (the
LeviBorodenko ``motionblur`` algorithm, docs/operators.md): a path of random step
lengths (Beta(1, 30) scaled by 1 - intensity) and turning angles (triangular, with sign flips
at a Beta(2, 20) "jitter" rate) is centred, randomly rotated, drawn on a canvas twice the kernel
size and averaged down to the kernel size. Every draw comes from one explicit generator.
"""

from __future__ import annotations

import itertools
import math

import torch

from operators.random import uniform

_EPS = 1e-8


def _u(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return float(uniform((1,), generator, low, high).item())


def _gamma_integer(shape: int, generator: torch.Generator) -> float:
    """Gamma(shape, 1) for an integer shape: a sum of ``shape`` unit exponentials."""
    u = uniform((shape,), generator).clamp_min(1e-300)
    return float(-torch.log(u).sum().item())


def _beta(a: int, b: int, generator: torch.Generator) -> float:
    """Beta(a, b) for integer a, b as Gamma(a) / (Gamma(a) + Gamma(b))."""
    ga, gb = _gamma_integer(a, generator), _gamma_integer(b, generator)
    return ga / (ga + gb)


def _triangular(left: float, mode: float, right: float, generator: torch.Generator) -> float:
    """Triangular(left, mode, right) by inverting its CDF."""
    u = _u(generator)
    width = right - left
    split = (mode - left) / width
    if u < split:
        return left + math.sqrt(u * width * (mode - left))
    return right - math.sqrt((1.0 - u) * width * (right - mode))


def motion_trajectory(size: int, intensity: float, generator: torch.Generator) -> torch.Tensor:
    """Complex positions (float64) of a random camera path, centred at 0, in kernel pixels."""
    diagonal = math.sqrt(2.0) * size
    max_length = 0.75 * diagonal * (_u(generator) + _u(generator, 0.0, intensity**2))
    steps: list[float] = []
    while sum(steps) < max_length:
        step = _beta(1, 30, generator) * (1.0 - intensity + _EPS) * diagonal
        if step < max_length:
            steps.append(step)
    max_angle = _u(generator, 0.0, intensity * math.pi)
    jitter = _beta(2, 20, generator)
    angles = [_u(generator, -max_angle, max_angle)]
    while len(angles) < len(steps):
        angle = _triangular(0.0, intensity * max_angle, max_angle + _EPS, generator)
        previous_sign = 1.0 if angles[-1] >= 0 else -1.0
        angles.append(-previous_sign * angle if _u(generator) < jitter else previous_sign * angle)
    increments = torch.tensor(steps, dtype=torch.float64) * torch.exp(
        1j * torch.tensor(angles, dtype=torch.float64)
    )
    path = torch.cumsum(increments, dim=0)
    path = path - path.mean()
    rotation = _u(generator, 0.0, math.pi)
    return path * complex(math.cos(rotation), math.sin(rotation))


def rasterise(path: torch.Tensor, size: int, supersample: int = 2) -> torch.Tensor:
    """Draw a complex polyline centred on a ``size x size`` kernel; returns it normalised to sum 1.

    The line is drawn on a canvas ``supersample`` times larger (the path is in kernel pixels and
    is scaled by ``supersample / 2`` as in the reference's double-size canvas), by bilinear
    splatting of points spaced a quarter canvas pixel apart, then averaged down to ``size``.
    """
    canvas_size = size * supersample
    scale = supersample / 2.0
    centre = (canvas_size - 1) / 2.0
    points = [path[:1]]
    for start, end in itertools.pairwise(path):
        n = max(2, math.ceil(4 * scale * abs(complex(end - start))) + 1)
        t = torch.linspace(0.0, 1.0, n, dtype=torch.float64)[1:]
        points.append(start + t * (end - start))
    pts = torch.cat(points) * scale
    xs, ys = pts.real + centre, pts.imag + centre
    canvas = torch.zeros(canvas_size + 1, canvas_size + 1, dtype=torch.float64)
    inside = (xs >= 0) & (ys >= 0) & (xs <= canvas_size - 1) & (ys <= canvas_size - 1)
    xs, ys = xs[inside], ys[inside]
    x0, y0 = xs.floor().long(), ys.floor().long()
    fx, fy = xs - x0, ys - y0
    for dy, dx, w in (
        (0, 0, (1 - fy) * (1 - fx)),
        (0, 1, (1 - fy) * fx),
        (1, 0, fy * (1 - fx)),
        (1, 1, fy * fx),
    ):
        canvas.index_put_((y0 + dy, x0 + dx), w, accumulate=True)
    canvas = canvas[:canvas_size, :canvas_size]
    kernel = canvas.view(size, supersample, size, supersample).mean(dim=(1, 3))
    total = kernel.sum()
    if total <= 0:  # a degenerate path: fall back to a point (no blur)
        kernel[size // 2, size // 2] = 1.0
        total = kernel.sum()
    return kernel / total


def motion_kernel(
    size: int = 61, intensity: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A ``size x size`` float64 motion kernel (sum 1) drawn from ``generator``."""
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    if not 0.0 <= intensity <= 1.0:
        raise ValueError(f"motion kernel intensity must be in [0, 1], got {intensity}")
    return rasterise(motion_trajectory(size, intensity, generator), size)
