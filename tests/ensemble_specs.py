"""Test helpers: EnsembleSpecs from flat keyword fields (solver, settings and problem mixed)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ensemble import EnsembleSettings, EnsembleSpec, OperatorSpec
from solvers import SolverSpec
from solvers.priors.gmm import GMMProblem

SETTINGS_FIELDS = {f.name for f in dataclasses.fields(EnsembleSettings)}


def flat_spec(**fields: Any) -> EnsembleSpec:
    """``solver``/``preset``/``overrides`` form the SolverSpec, settings fields the
    EnsembleSettings, the rest (prior, operator, y, seed, device) the problem."""
    fields = dict(fields)
    settings = {k: fields.pop(k) for k in list(fields) if k in SETTINGS_FIELDS}
    name, preset = fields.pop("solver"), fields.pop("preset", None)
    solver = SolverSpec(name, preset, fields.pop("overrides", {}))
    return EnsembleSpec(solver=solver, settings=EnsembleSettings(**settings), **fields)


def gmm_daps_spec(problem: GMMProblem, **changes: Any) -> EnsembleSpec:
    """6 DAPS particles (GMM preset, 10 annealing steps) on a d = 8 Gaussian-mixture problem."""
    base: dict[str, Any] = {
        "solver": "daps",
        "preset": "gmm/pixel_hmc",
        "overrides": {"annealing_steps": 10, "mcmc_steps": 4},
        "prior": {"name": "gmm", "d": 8},
        "operator": OperatorSpec.of(problem.operator),
        "y": problem.y,
        "particles": 6,
        "seed": 3,
        "progress": False,
    }
    return flat_spec(**{**base, **changes})
