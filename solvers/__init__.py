"""Posterior samplers for inverse problems with diffusion priors (DESIGN.md, "Solver").

``solvers.build(name, preset=None, **overrides)``, ``solvers.available()``,
``solvers.presets(name)``; ``solvers.priors`` holds the prior (denoiser) adapters. Importing
this package stays light: no ray, mlflow, diffusers or transformers.
"""

from solvers.base import Result, Solver, SolverInputError, State
from solvers.config import SolverConfigError
from solvers.registry import available, build, presets, solver_class
from solvers.spec import SolverSpec

__all__ = [
    "Result",
    "Solver",
    "SolverConfigError",
    "SolverInputError",
    "SolverSpec",
    "State",
    "available",
    "build",
    "presets",
    "solver_class",
]
