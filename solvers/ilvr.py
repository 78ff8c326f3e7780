"""ILVR: iterative latent variable refinement for super-resolution (pixel priors).

Choi, Kim, Jeong, Gwon, Yoon, "ILVR: conditioning method for denoising diffusion probabilistic
models", ICCV 2021 (Algorithm 1). After each reverse step, ILVR swaps the low frequencies of the
sample for those of the forward-diffused reference image y_ref':

    x <- x - phi_N(x) + phi_N(y_ref'),   phi_N = up(down(.)).

dipswarm takes down = A (the operator's own downsampling) and up = A^+ (its pseudo-inverse by
CG, built from the adjoint), so phi_N = A^+ A, the orthogonal projector onto A's row space, and
phi_N(y_ref + s' eps) = A^+ (y + s' A eps) with y = A y_ref. The update is then exactly the
Score-SDE projection with lambda = 1 (``solvers/score_sde.py``): ILVR is that chain restricted
to super-resolution. The paper's resizer pair (bicubic down, bicubic up) is not a projector;
A^+ makes phi_N idempotent and A phi_N = A. The ``matrix`` operator of the GMM benchmark is
accepted too (A^+ A is the same projector there); other operators are refused (``score_sde``
applies the same projection to any linear operator).

``free_steps`` is ILVR's conditioning range: the last ``free_steps`` steps run without
conditioning. The ILVR code conditions while its timestep t > range_t, so its default range_t =
0 leaves the last step free (free_steps = range_t + 1); it also noises the reference at the
step's input level t; dipswarm follows the paper (the output level t - 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from operators import Operator
from solvers.base import SolverInputError
from solvers.config import Order, hyper
from solvers.preset import Preset
from solvers.priors.base import Prior
from solvers.registry import register
from solvers.score_sde import GMM_SOURCE, PAPER_SETTING, ProjectionConfig, ProjectionSolver

ILVR_OPERATORS = ("super_resolution", "matrix")


@dataclass(frozen=True)
class ILVRConfig(ProjectionConfig):
    """ILVR: the projection chain with phi_N = A^+ A, except the last ``free_steps`` steps."""

    free_steps: int = hyper(
        0,
        0,
        10000,
        source="ILVR code `range_t` = 0 (it conditions while t > range_t: range_t + 1 here)",
    )

    orders = (
        *ProjectionConfig.orders,
        Order("free_steps", "num_steps", why="at most every step runs unconditioned"),
    )


ILVR_PRESETS: dict[str, Preset] = {
    "pixel/super_resolution": Preset(
        overrides={},
        backbone="pixel",
        task="super_resolution",
        source=f"ILVR (Choi et al.): {PAPER_SETTING}, conditioning at every step",
    ),
    "gmm": Preset(overrides={"num_steps": 50}, task="matrix", source=GMM_SOURCE),
}


@register(presets=ILVR_PRESETS)
class ILVR(ProjectionSolver):
    """ILVR (Choi et al., ICCV 2021): low-pass conditioning phi_N = A^+ A after each step."""

    name = "ilvr"
    config_class = ILVRConfig
    config: ILVRConfig

    def weight(self, k: int) -> float:
        """1 (full replacement of phi_N) except on the last ``free_steps`` steps."""
        return 1.0 if k < self.config.num_steps - self.config.free_steps else 0.0

    def check_problem(self, prior: Prior, operator: Operator, y: torch.Tensor) -> None:
        """Also refuse operators other than super-resolution (and the GMM ``matrix``)."""
        super().check_problem(prior, operator, y)
        if operator.name not in ILVR_OPERATORS:
            raise SolverInputError(
                f"ilvr conditions on the low-pass filter phi_N = up(down(x)) of super-resolution "
                f"(operators: {', '.join(ILVR_OPERATORS)}); {operator.name} is not one: use "
                "score_sde, whose projection A^+ A is the same for any linear operator"
            )
