"""Solver registry: ``@register``, ``build(name, preset=None, **overrides)``, ``available()``,
``presets(name)``, ``backbones(name, preset)`` (docs/solvers/index.md).

A solver module declares its Solver subclass with ``@register`` (the name is the class's
``name``) or ``@register(presets=...)`` with its typed ``Preset`` table; nothing else needs
editing for a new solver. The first query imports every module of the ``solvers`` package (not
its ``priors`` subpackage), so the built-in solvers are registered without the caller importing
them; those modules import torch only, so ``import solvers`` stays light.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from solvers.base import Solver, SolverInputError
from solvers.preset import BACKBONES, Preset

S = TypeVar("S", bound=type[Solver])

_SOLVERS: dict[str, type[Solver]] = {}
_PRESETS: dict[str, dict[str, Preset]] = {}
_builtins_loaded = False


def register(
    cls: S | None = None, /, *, presets: Mapping[str, Preset] | None = None
) -> S | Callable[[S], S]:
    """Class decorator: register ``cls`` under ``cls.name`` with its named ``presets``."""

    def add(solver: S) -> S:
        name = solver.name
        if not isinstance(name, str) or not name or name == Solver.name:
            raise TypeError(f"{solver.__qualname__} must set a class attribute `name` to register")
        known = _SOLVERS.get(name)
        if known is not None and known is not solver:
            raise ValueError(
                f"solver name {name!r} is taken by {known.__module__}.{known.__name__}"
            )
        table = dict(presets or {})
        for key, preset in table.items():
            if not isinstance(key, str) or not isinstance(preset, Preset):
                raise TypeError(f"{name}: presets must map names to Preset objects ({key!r})")
        _SOLVERS[name], _PRESETS[name] = solver, table
        return solver

    return add if cls is None else add(cls)


def unregister(name: str) -> None:
    """Remove solver ``name`` (for solvers registered by tests)."""
    _SOLVERS.pop(name, None)
    _PRESETS.pop(name, None)


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    package = importlib.import_module("solvers")
    for module in pkgutil.iter_modules(package.__path__):
        if not module.ispkg and not module.name.startswith("_"):
            importlib.import_module(f"solvers.{module.name}")


def available() -> list[str]:
    """Names accepted by ``build``."""
    _load_builtins()
    return sorted(_SOLVERS)


def solver_class(name: str) -> type[Solver]:
    """The Solver subclass registered as ``name``."""
    _load_builtins()
    if name not in _SOLVERS:
        raise SolverInputError(f"unknown solver {name!r}; available: {', '.join(available())}")
    return _SOLVERS[name]


def presets(name: str) -> dict[str, Preset]:
    """The named presets of solver ``name``."""
    solver_class(name)
    return dict(_PRESETS[name])


def backbones(name: str, preset: str | None = None) -> tuple[str, ...]:
    """The prior kinds ("pixel", "latent") solver ``name`` with ``preset`` runs on: the
    solver's own restriction, else the preset's backbone, else both."""
    restricted = solver_class(name).latent
    if restricted is not None:
        return ("latent",) if restricted else ("pixel",)
    backbone = None if preset is None else presets(name)[preset].backbone
    return (backbone,) if backbone is not None else BACKBONES


def build(name: str, preset: str | None = None, **overrides: Any) -> Solver:
    """A solver with its config from the defaults, then ``preset``, then ``overrides``.

    The solvers, their hyperparameters and presets: docs/solvers/index.md.

    Example (CPU, under a second): DPS with its GMM-benchmark preset on a 2-D Gaussian-mixture
    prior, measuring the first coordinate.

        >>> import torch, operators, solvers
        >>> from solvers.priors import load
        >>> prior = load("gmm", d=2)
        >>> op = operators.build("matrix", A=torch.tensor([[1.0, 0.0]]), sigma=0.1)
        >>> y = op.measure(torch.tensor([[8.0, 0.0]]), torch.Generator().manual_seed(0))
        >>> solver = solvers.build("dps", "gmm", num_steps=20)
        >>> result = solver.sample(prior, op, y, n=4, seed=0)
        >>> tuple(result.samples.shape), result.status, result.nfe
        ((4, 2), ['ok', 'ok', 'ok', 'ok'], 20)
        >>> bool((result.samples[:, 0] - y[0, 0]).abs().max() < 1.0)
        True
    """
    cls = solver_class(name)
    values: dict[str, Any] = {}
    chosen: Preset | None = None
    if preset is not None:
        table = presets(name)
        if preset not in table:
            raise SolverInputError(
                f"{name} has no preset {preset!r}; presets: {', '.join(sorted(table)) or 'none'}"
            )
        chosen = table[preset]
        values.update(chosen.overrides)
    values.update(overrides)
    solver = cls(cls.config_class.from_overrides(**values))
    solver.preset, solver.preset_info = preset, chosen
    return solver
