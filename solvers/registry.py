"""Solver registry: ``build(name, preset=None, **overrides)``, ``available()``, ``presets(name)``.

Each solver module defines its Solver subclass and a ``PRESETS`` dict mapping a preset name
(e.g. ``"pixel_hmc/super_resolution"``) to field overrides with their source. Modules are
imported on first use so that ``import solvers`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

from solvers.base import Solver, SolverInputError

# name -> "module:Class"
_REGISTRY: dict[str, str] = {
    "dps": "solvers.dps:DPS",
    "latent_dps": "solvers.dps:LatentDPS",
    "daps": "solvers.daps:DAPS",
    "daps_opt": "solvers.daps_opt:DAPSOpt",
    "resample": "solvers.resample:ReSample",
    "noise_langevin": "solvers.noise_langevin:NoiseLangevin",
    "cdps": "solvers.cdps:CDPS",
}


def available() -> list[str]:
    """Names accepted by ``build``."""
    return sorted(_REGISTRY)


def solver_class(name: str) -> type[Solver]:
    """The Solver subclass registered as ``name``."""
    if name not in _REGISTRY:
        raise SolverInputError(f"unknown solver {name!r}; available: {', '.join(available())}")
    module_name, class_name = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def presets(name: str) -> dict[str, dict[str, Any]]:
    """The named presets of solver ``name``: preset name -> field overrides."""
    cls = solver_class(name)
    module = importlib.import_module(cls.__module__)
    return dict(getattr(module, "PRESETS", {}).get(name, {}))


def build(name: str, preset: str | None = None, **overrides: Any) -> Solver:
    """A solver with its config from the defaults, then ``preset``, then ``overrides``."""
    cls = solver_class(name)
    values: dict[str, Any] = {}
    if preset is not None:
        table = presets(name)
        if preset not in table:
            raise SolverInputError(
                f"{name} has no preset {preset!r}; presets: {', '.join(sorted(table)) or 'none'}"
            )
        values.update(table[preset])
    values.update(overrides)
    solver = cls(cls.config_class.from_overrides(**values))
    solver.preset = preset
    return solver
