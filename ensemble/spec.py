"""What an ensemble run needs, as small picklable values (docs/ensemble.md).

Workers rebuild everything from the spec: the prior from its ``solvers.priors.load`` spec, the
operator from its registered name, build parameters and buffers, the solver from its
``SolverSpec``. Nothing large (network weights) travels with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

import operators
from ensemble.settings import EnsembleSettings, EnsembleSpecError
from operators import Operator
from solvers.spec import SolverSpec


@dataclass(frozen=True)
class OperatorSpec:
    """An operator as its registered name, build parameters and buffers (masks, kernels)."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    buffers: Mapping[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def of(cls, operator: Operator) -> OperatorSpec:
        """The spec of an operator made by ``operators.build`` (random parts included)."""
        if operator.build_spec is None:
            raise EnsembleSpecError(
                f"operator {operator.name!r} was not made by operators.build, so workers cannot "
                "rebuild it; build it with operators.build(name, **params) or pass "
                "OperatorSpec(name, params)"
            )
        name, params = operator.build_spec
        buffers = {k: v.detach().cpu() for k, v in operator.state_dict().items()}
        return cls(name, dict(params), buffers)

    def build(self, device: str | torch.device = "cpu") -> Operator:
        """The operator, with its random parts restored from the buffers."""
        operator = operators.build(self.name, **dict(self.params))
        if self.buffers:
            _, unexpected = operator.load_state_dict(dict(self.buffers), strict=False)
            if unexpected:
                raise EnsembleSpecError(
                    f"operator {self.name!r} has no buffers {sorted(unexpected)}; the spec's "
                    "buffers must come from OperatorSpec.of(operator) of the same operator"
                )
        return operator.to(device)


@dataclass(frozen=True)
class EnsembleSpec:
    """One ensemble run: the problem (prior, operator, measurement), the solver, the seed and
    device, and the ensemble ``settings`` (particles, workers, interaction, selection)."""

    solver: SolverSpec
    prior: str | Mapping[str, Any]
    operator: OperatorSpec
    y: torch.Tensor
    seed: int = 0
    device: str = "cpu"
    settings: EnsembleSettings = field(default_factory=EnsembleSettings)

    def __post_init__(self) -> None:
        if not isinstance(self.solver, SolverSpec):
            raise EnsembleSpecError(
                f"solver must be a solvers.SolverSpec(name, preset, overrides), got {self.solver!r}"
            )
        if not isinstance(self.operator, OperatorSpec):
            raise EnsembleSpecError(
                "operator must be an OperatorSpec; use OperatorSpec.of(operators.build(...))"
            )
        if not isinstance(self.y, torch.Tensor) or not bool(torch.isfinite(self.y).all()):
            raise EnsembleSpecError("y must be a finite torch.Tensor (the measurement)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise EnsembleSpecError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.settings, EnsembleSettings):
            raise EnsembleSpecError("settings must be an ensemble.EnsembleSettings")

    def replace(self, **changes: Any) -> EnsembleSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def with_settings(self, **changes: Any) -> EnsembleSpec:
        """A copy with some ensemble settings changed (validated again)."""
        return self.replace(settings=self.settings.replace(**changes))
