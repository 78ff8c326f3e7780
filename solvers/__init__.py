"""Posterior samplers for inverse problems with diffusion priors (docs/solvers/index.md).

``solvers.build(name, preset=None, **overrides)``, ``solvers.available()``,
``solvers.presets(name)`` (typed ``Preset`` objects); ``@solvers.register`` adds a solver.
``solvers.priors`` holds the prior (denoiser) adapters. Importing this package stays light: no
ray, mlflow, diffusers or transformers.
"""

from solvers.base import Result, Solver, SolverInputError, State
from solvers.config import SolverConfigError
from solvers.preset import Preset
from solvers.registry import available, backbones, build, presets, register, solver_class
from solvers.spec import SolverSpec

__all__ = [
    "Preset",
    "Result",
    "Solver",
    "SolverConfigError",
    "SolverInputError",
    "SolverSpec",
    "State",
    "available",
    "backbones",
    "build",
    "presets",
    "register",
    "solver_class",
]
