"""SolverSpec: a solver as its registered name, preset and overrides (docs/architecture.md).

The one record of "which solver with which hyperparameters" that every layer above passes
around: experiment methods, ensemble runs, benchmarks and studies. It is small and picklable, so
workers rebuild the solver from it. A preset may contain ``{task}``, replaced by an operator name
with ``for_task`` (``pixel_hmc/{task}`` -> ``pixel_hmc/super_resolution``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from solvers.base import Solver, SolverInputError
from solvers.registry import available, build, presets

TASK_PLACEHOLDER = "{task}"


@dataclass(frozen=True)
class SolverSpec:
    """A registered solver ``name``, an optional ``preset`` and field ``overrides``.

    Construction checks the name and the shape of the fields; ``check`` (or ``build``) also
    checks the preset and the overrides against the solver's typed config.
    """

    name: str
    preset: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in available():
            raise SolverInputError(
                f"unknown solver {self.name!r}; available: {', '.join(available())}"
            )
        if self.preset is not None and not isinstance(self.preset, str):
            raise SolverInputError(f"preset must be a string or None, got {self.preset!r}")
        if not isinstance(self.overrides, Mapping) or not all(
            isinstance(k, str) for k in self.overrides
        ):
            raise SolverInputError(
                f"overrides must map field names to values, got {self.overrides!r}"
            )
        object.__setattr__(self, "overrides", dict(self.overrides))

    @property
    def templated(self) -> bool:
        """Whether the preset still holds ``{task}``."""
        return self.preset is not None and TASK_PLACEHOLDER in self.preset

    def for_task(self, operator: str) -> SolverSpec:
        """This spec with ``{task}`` in the preset replaced by the operator name."""
        if not self.templated:
            return self
        assert self.preset is not None
        return SolverSpec(
            self.name, self.preset.replace(TASK_PLACEHOLDER, operator), self.overrides
        )

    def with_overrides(self, values: Mapping[str, Any]) -> SolverSpec:
        """This spec with ``values`` merged over its overrides."""
        return SolverSpec(self.name, self.preset, {**self.overrides, **values})

    def check(self) -> None:
        """Raise ``SolverInputError``/``SolverConfigError`` if the preset or overrides do not
        fit the solver (no prior is loaded)."""
        if self.templated:
            raise SolverInputError(
                f"{self.name}: preset {self.preset!r} still holds {TASK_PLACEHOLDER}; call "
                "for_task(operator_name) first"
            )
        if self.preset is not None and self.preset not in presets(self.name):
            raise SolverInputError(
                f"{self.name} has no preset {self.preset!r}; presets: "
                f"{', '.join(sorted(presets(self.name))) or 'none'}"
            )
        build(self.name, self.preset, **self.overrides)

    def build(self) -> Solver:
        """The solver: its config from the defaults, then the preset, then the overrides."""
        if self.templated:
            self.check()
        return build(self.name, self.preset, **self.overrides)

    def label(self) -> str:
        """``name`` or ``name/preset`` (for tables and logs)."""
        return self.name if self.preset is None else f"{self.name}/{self.preset}"
