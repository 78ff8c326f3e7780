"""Test helper: an EnsembleSpec from flat keyword fields (solver, settings and problem mixed)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ensemble import EnsembleSettings, EnsembleSpec
from solvers import SolverSpec

SETTINGS_FIELDS = {f.name for f in dataclasses.fields(EnsembleSettings)}


def flat_spec(**fields: Any) -> EnsembleSpec:
    """``solver``/``preset``/``overrides`` form the SolverSpec, settings fields the
    EnsembleSettings, the rest (prior, operator, y, seed, device) the problem."""
    fields = dict(fields)
    settings = {k: fields.pop(k) for k in list(fields) if k in SETTINGS_FIELDS}
    solver = SolverSpec(
        fields.pop("solver"), fields.pop("preset", None), fields.pop("overrides", {})
    )
    return EnsembleSpec(solver=solver, settings=EnsembleSettings(**settings), **fields)
