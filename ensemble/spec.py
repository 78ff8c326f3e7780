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
    """One ensemble run: the problems (prior, operator, measurements), the solver, the seeds and
    device, and the ensemble ``settings`` (particles per problem, workers, interaction,
    selection).

    ``seed`` an int: one problem, ``y`` its measurement (any shape the solver accepts).
    ``seed`` a tuple of P ints: P problems (images) solved in one batch, ``y`` of shape
    ``(P, *measurement shape)``; ``operator`` is then one OperatorSpec shared by every problem
    or a tuple of P (each problem's own random parts). Each problem gets
    ``settings.particles`` rows; rows never interact across problems, and problem p's rows draw
    the random streams a single-problem run seeded by ``seed[p]`` draws.
    """

    solver: SolverSpec
    prior: str | Mapping[str, Any]
    operator: OperatorSpec | tuple[OperatorSpec, ...]
    y: torch.Tensor
    seed: int | tuple[int, ...] = 0
    device: str = "cpu"
    settings: EnsembleSettings = field(default_factory=EnsembleSettings)

    def __post_init__(self) -> None:
        if not isinstance(self.solver, SolverSpec):
            raise EnsembleSpecError(
                f"solver must be a solvers.SolverSpec(name, preset, overrides), got {self.solver!r}"
            )
        if not isinstance(self.settings, EnsembleSettings):
            raise EnsembleSpecError("settings must be an ensemble.EnsembleSettings")
        if isinstance(self.seed, list | tuple):
            object.__setattr__(self, "seed", tuple(self.seed))
            if not self.seed or not all(_is_int(s) for s in self.seed):
                raise EnsembleSpecError(
                    f"seed must be an integer or a non-empty tuple of integers (one per "
                    f"problem), got {self.seed!r}"
                )
        elif not _is_int(self.seed):
            raise EnsembleSpecError(f"seed must be an integer, got {self.seed!r}")
        if isinstance(self.operator, list | tuple):
            object.__setattr__(self, "operator", tuple(self.operator))
            if len(self.operator) != self.problems:
                raise EnsembleSpecError(
                    f"operator lists {len(self.operator)} OperatorSpecs for {self.problems} "
                    "problem(s); give one shared OperatorSpec or one per problem"
                )
        if not all(isinstance(o, OperatorSpec) for o in self.operators):
            raise EnsembleSpecError(
                "operator must be an OperatorSpec (or a tuple of them, one per problem); use "
                "OperatorSpec.of(operators.build(...))"
            )
        if not isinstance(self.y, torch.Tensor) or not bool(torch.isfinite(self.y).all()):
            raise EnsembleSpecError("y must be a finite torch.Tensor (the measurement)")
        if isinstance(self.seed, tuple) and self.y.shape[0] != self.problems:
            raise EnsembleSpecError(
                f"y has {self.y.shape[0]} measurement(s) along dim 0 for {self.problems} "
                "problems (one seed each); y must be (problems, *measurement shape)"
            )
        rows, ens = self.rows, self.settings
        if ens.workers > rows:
            raise EnsembleSpecError(
                f"workers = {ens.workers} exceeds the {rows} rows (problems x particles = "
                f"{self.problems} x {ens.particles}); every worker needs at least one row"
            )
        if ens.partition is not None and sum(ens.partition) != rows:
            raise EnsembleSpecError(
                f"partition {list(ens.partition)} must sum to the {rows} rows (problems x "
                f"particles = {self.problems} x {ens.particles})"
            )

    @property
    def problems(self) -> int:
        """How many problems (images) this run solves."""
        return len(self.seed) if isinstance(self.seed, tuple) else 1

    @property
    def seeds(self) -> tuple[int, ...]:
        """One seed per problem."""
        return self.seed if isinstance(self.seed, tuple) else (self.seed,)

    @property
    def operators(self) -> tuple[OperatorSpec, ...]:
        """The operator spec(s): one shared, or one per problem."""
        return self.operator if isinstance(self.operator, tuple) else (self.operator,)

    @property
    def rows(self) -> int:
        """Problems x particles: the batch of rows the workers share."""
        return self.problems * self.settings.particles

    def problem_of(self, slot: int) -> int:
        """The problem a global row slot belongs to (slots are problem-major)."""
        return slot // self.settings.particles

    def particle_of(self, slot: int) -> int:
        """The particle index of a slot within its problem."""
        return slot % self.settings.particles

    def sizes(self) -> list[int]:
        """Rows per worker: the partition, or an even split (earlier workers get more)."""
        if self.settings.partition is not None:
            return list(self.settings.partition)
        base, extra = divmod(self.rows, self.settings.workers)
        return [base + (1 if w < extra else 0) for w in range(self.settings.workers)]

    def replace(self, **changes: Any) -> EnsembleSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def with_settings(self, **changes: Any) -> EnsembleSpec:
        """A copy with some ensemble settings changed (validated again)."""
        return self.replace(settings=self.settings.replace(**changes))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
