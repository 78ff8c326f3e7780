"""What an ensemble run needs, as small picklable values (DESIGN.md, "Ensemble").

Workers rebuild everything from the spec: the prior from its ``solvers.priors.load`` spec, the
operator from its registered name, build parameters and buffers, the solver from its name,
preset and overrides. Nothing large (network weights) travels with it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

import operators
from operators import Operator

BACKENDS = ("local", "ray")
FEATURES = ("pixels", "latent", "dino")
SELECTIONS = ("all", "best")


class EnsembleSpecError(ValueError):
    """An ensemble setting outside its allowed values; the message names the field and the fix."""


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
class Repulsion:
    """RBF repulsion in feature space (RLSD / particle guidance; algorithms.md).

    ``weight`` scales the pulled-back push (0 turns repulsion off); it acts only while the
    solver's noise level lies in [``sigma_min``, ``sigma_max``]; ``svgd`` divides each push by
    the row's kernel sum.
    """

    weight: float = 0.0
    sigma_min: float = 0.0
    sigma_max: float = math.inf
    svgd: bool = False

    def active(self, sigma: float) -> bool:
        return self.weight > 0 and self.sigma_min <= sigma <= self.sigma_max


@dataclass(frozen=True)
class Pruning:
    """Top-k by measurement loss before the given steps (seed 000: 4 -> 2 at step 29 of 50).

    ``refill``: freed slots receive copies of the survivors (with fresh random streams), so the
    particle count stays N; otherwise pruned particles stop.
    """

    steps: tuple[int, ...] = ()
    keep: tuple[int, ...] = ()
    refill: bool = True


@dataclass(frozen=True)
class SMC:
    """Sequential Monte Carlo resampling (TDS-style potentials; algorithms.md).

    Potential phi_i = -temperature ||A(x0_i) - y||^2 / (2 (sigma_y^2 + r^2)) at noise level r;
    incremental log-weights phi_k - phi_{k-1} accumulate, and the particles are resampled
    systematically when ESS < ``ess_threshold`` N, at steps in [``start``, ``end``).
    """

    enabled: bool = False
    ess_threshold: float = 0.5
    temperature: float = 1.0
    start: int = 0
    end: int | None = None


@dataclass(frozen=True)
class EnsembleSpec:
    """One ensemble run: the problem, the solver, the particles and where they run."""

    solver: str
    prior: str | Mapping[str, Any]
    operator: OperatorSpec
    y: torch.Tensor
    preset: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    particles: int = 4
    seed: int = 0
    backend: str = "local"
    workers: int = 1
    partition: tuple[int, ...] | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    device: str = "cpu"
    address: str | None = None
    features: str = "pixels"
    dino_model: str | None = None
    repulsion: Repulsion = field(default_factory=Repulsion)
    pruning: Pruning = field(default_factory=Pruning)
    smc: SMC = field(default_factory=SMC)
    selection: str = "all"
    select_k: int = 1
    checkpoint_every: int = 10
    checkpoint_dir: str | None = None
    max_restarts: int = 3
    progress: bool = True

    def __post_init__(self) -> None:
        _check_choice("backend", self.backend, BACKENDS)
        _check_choice("features", self.features, FEATURES)
        _check_choice("selection", self.selection, SELECTIONS)
        if not isinstance(self.operator, OperatorSpec):
            raise EnsembleSpecError(
                "operator must be an OperatorSpec; use OperatorSpec.of(operators.build(...))"
            )
        if not isinstance(self.y, torch.Tensor) or not bool(torch.isfinite(self.y).all()):
            raise EnsembleSpecError("y must be a finite torch.Tensor (the measurement)")
        _check_int("particles", self.particles, 1)
        _check_int("workers", self.workers, 1)
        if self.workers > self.particles:
            raise EnsembleSpecError(
                f"workers = {self.workers} exceeds particles = {self.particles}; every worker "
                "needs at least one particle"
            )
        if self.partition is not None:
            sizes = tuple(self.partition)
            if len(sizes) != self.workers or sum(sizes) != self.particles or min(sizes) < 1:
                raise EnsembleSpecError(
                    f"partition {sizes} must list {self.workers} positive sizes that sum to "
                    f"particles = {self.particles}"
                )
        if self.cpus_per_worker < 0 or self.gpus_per_worker < 0:
            raise EnsembleSpecError("cpus_per_worker and gpus_per_worker must be >= 0")
        if self.features == "dino" and not self.dino_model:
            raise EnsembleSpecError(
                "features='dino' needs dino_model: a hub id (e.g. 'facebook/dinov2-small') or a "
                "local directory with a transformers ViT/DINOv2 model"
            )
        self._check_interaction()
        _check_int("select_k", self.select_k, 1)
        if self.selection == "best" and self.select_k > self.particles:
            raise EnsembleSpecError(
                f"select_k = {self.select_k} exceeds particles = {self.particles}"
            )
        _check_int("checkpoint_every", self.checkpoint_every, 1)
        _check_int("max_restarts", self.max_restarts, 0)

    def _check_interaction(self) -> None:
        rep, prune, smc = self.repulsion, self.pruning, self.smc
        if rep.weight < 0 or rep.sigma_min > rep.sigma_max:
            raise EnsembleSpecError(
                "repulsion needs weight >= 0 and sigma_min <= sigma_max, got "
                f"weight={rep.weight}, sigma_min={rep.sigma_min}, sigma_max={rep.sigma_max}"
            )
        if len(prune.steps) != len(prune.keep):
            raise EnsembleSpecError(
                f"pruning.steps {prune.steps} and pruning.keep {prune.keep} must have the same "
                "length (one survivor count per pruning step)"
            )
        if list(prune.steps) != sorted(set(prune.steps)) or any(s < 0 for s in prune.steps):
            raise EnsembleSpecError(f"pruning.steps {prune.steps} must be increasing and >= 0")
        previous = self.particles
        for keep in prune.keep:
            if not 1 <= keep <= previous:
                raise EnsembleSpecError(
                    f"pruning.keep {prune.keep} must be survivor counts in [1, particles] that "
                    "do not grow (without refill, each round keeps at most the previous count)"
                )
            previous = previous if prune.refill else keep
        if not 0 < smc.ess_threshold <= 1 or smc.temperature < 0:
            raise EnsembleSpecError(
                "smc.ess_threshold must lie in (0, 1] and smc.temperature be >= 0, got "
                f"{smc.ess_threshold}, {smc.temperature}"
            )
        if smc.enabled and prune.steps:
            raise EnsembleSpecError("use either pruning or smc resampling, not both")

    def sizes(self) -> list[int]:
        """Particles per worker: the partition, or an even split (earlier workers get more)."""
        if self.partition is not None:
            return list(self.partition)
        base, extra = divmod(self.particles, self.workers)
        return [base + (1 if w < extra else 0) for w in range(self.workers)]

    def replace(self, **changes: Any) -> EnsembleSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise EnsembleSpecError(f"{name} = {value!r}; allowed: {', '.join(map(repr, allowed))}")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise EnsembleSpecError(f"{name} must be an integer >= {low}, got {value!r}")
