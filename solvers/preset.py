"""Typed solver presets: named field overrides with the problems they were tuned for.

A preset states what it was tuned for in fields, never in its name: ``backbone`` (a "pixel" or
a "latent" prior; None: either) and ``task`` (the operator name; None: any operator). Step
sizes follow the likelihood's curvature and the prior's space, so a preset applied to another
backbone or task is a silent mistake; ``Preset.mismatch`` names it (docs/solvers/index.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BACKBONES = ("pixel", "latent")

# The 8 seed tasks (operator names) that the per-task preset tables cover.
SEED_TASKS = (
    "super_resolution",
    "inpaint_box",
    "inpaint_random",
    "gaussian_blur",
    "motion_blur",
    "phase_retrieval",
    "nonlinear_blur",
    "hdr",
)


@dataclass(frozen=True, kw_only=True)
class Preset:
    """Field ``overrides`` of a solver's config, tuned for ``backbone`` and ``task``.

    ``source`` says where the values come from (a paper's table, a reference config, a
    benchmark sweep).
    """

    overrides: Mapping[str, Any]
    source: str
    backbone: str | None = None
    task: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.overrides, Mapping) or not all(
            isinstance(k, str) for k in self.overrides
        ):
            raise TypeError(f"Preset.overrides must map field names to values: {self.overrides!r}")
        if self.backbone is not None and self.backbone not in BACKBONES:
            raise ValueError(
                f"Preset.backbone must be one of {BACKBONES} or None: {self.backbone!r}"
            )
        if self.task is not None and (not isinstance(self.task, str) or not self.task):
            raise ValueError(f"Preset.task must be an operator name or None: {self.task!r}")
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError("Preset.source must say where the values come from")
        object.__setattr__(self, "overrides", dict(self.overrides))

    def mismatch(self, name: str, prior_is_latent: bool, operator_name: str) -> str | None:
        """Why preset ``name`` does not fit this prior and operator, or None when it fits."""
        if self.backbone is not None and (self.backbone == "latent") != prior_is_latent:
            got = "latent" if prior_is_latent else "pixel"
            return (
                f"preset {name!r} is tuned for a {self.backbone} prior but the prior is a {got} "
                "prior; choose a preset of the prior's backbone (solvers.presets(name) lists them)"
            )
        if self.task is not None and self.task != operator_name:
            return (
                f"preset {name!r} is tuned for the {self.task!r} operator but the operator is "
                f"{operator_name!r}; choose the preset for {operator_name!r} or pass overrides"
            )
        return None
