"""The user-facing ensemble settings: particles, workers, interaction and selection.

Errors name the field relative to the settings object that checks it (``weight`` for
``Repulsion``, ``workers`` or ``pruning.keep`` for ``EnsembleSettings``), so that a config
reader can put the section's path in front.

Each setting is declared, defaulted and validated here once (docs/ensemble.md); experiment
configs use ``EnsembleSettings`` as their ``ensemble`` section and ``EnsembleSpec`` carries it
to the workers. Sequence fields accept lists (as YAML gives them) and are stored as tuples so
that settings stay hashable and picklable.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

BACKENDS = ("local", "ray")
FEATURES = ("pixels", "latent", "dino")
RANKINGS = ("estimate", "lookahead")
WEIGHT_SELECTIONS = ("weighted", "heaviest")
SELECTIONS = ("all", "best", *WEIGHT_SELECTIONS)


class EnsembleSpecError(ValueError):
    """An ensemble setting outside its allowed values; the message names the field and the fix."""


@dataclass(frozen=True)
class Repulsion:
    """RBF repulsion in feature space (particle guidance, Corso et al., ICLR 2024; SVGD, Liu &
    Wang, NeurIPS 2016).

    ``weight`` scales the pulled-back push (0 turns repulsion off); it acts only while the
    solver's noise level lies in [``sigma_min``, ``sigma_max``]; ``svgd`` divides each push by
    the row's kernel sum.
    """

    weight: float = 0.0
    sigma_min: float = 0.0
    sigma_max: float = math.inf
    svgd: bool = False

    def __post_init__(self) -> None:
        _check_number("weight", self.weight, 0.0)
        _check_number("sigma_min", self.sigma_min, 0.0)
        _check_number("sigma_max", self.sigma_max, 0.0)
        _check_bool("svgd", self.svgd)
        if self.sigma_min > self.sigma_max:
            raise EnsembleSpecError(
                f"sigma_min = {self.sigma_min} exceeds sigma_max = "
                f"{self.sigma_max}; repulsion acts for noise levels in [sigma_min, sigma_max]"
            )

    def active(self, sigma: float) -> bool:
        return self.weight > 0 and self.sigma_min <= sigma <= self.sigma_max


@dataclass(frozen=True)
class Pruning:
    """Top-k by measurement loss before the given steps (e.g. 4 -> 2 at step 29 of 50).

    ``refill``: freed slots receive copies of the survivors (with fresh random streams), so the
    particle count stays N; otherwise pruned particles stop. ``rank_by``: ``estimate`` ranks by
    the loss of the solver's current clean estimate (state.x0), ``lookahead`` by the loss of
    the denoised estimate x0_hat of the current state (one extra denoiser call per particle at
    each pruning step). ``diagnostics``: record both losses of every particle at every step
    (the lookahead one costs a denoiser call per particle and step) and their Spearman rank
    correlation with the final loss (traces ``rank_corr_estimate``, ``rank_corr_lookahead``).
    """

    steps: tuple[int, ...] = ()
    keep: tuple[int, ...] = ()
    refill: bool = True
    rank_by: str = "estimate"
    diagnostics: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "keep"):
            value = getattr(self, name)
            if not isinstance(value, list | tuple) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in value
            ):
                raise EnsembleSpecError(f"{name} must be a list of integers, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        _check_bool("refill", self.refill)
        _check_choice("rank_by", self.rank_by, RANKINGS)
        _check_bool("diagnostics", self.diagnostics)
        if len(self.steps) != len(self.keep):
            raise EnsembleSpecError(
                f"steps {list(self.steps)} and keep {list(self.keep)} must have "
                "the same length (one survivor count per pruning step)"
            )
        if list(self.steps) != sorted(set(self.steps)) or any(s < 0 for s in self.steps):
            raise EnsembleSpecError(
                f"steps {list(self.steps)} must be increasing step indices >= 0"
            )

    def check_particles(self, particles: int) -> None:
        """Survivor counts lie in [1, particles] and, without refill, do not grow."""
        previous = particles
        for keep in self.keep:
            if not 1 <= keep <= previous:
                raise EnsembleSpecError(
                    f"pruning.keep {list(self.keep)} must be survivor counts in [1, particles = "
                    f"{particles}] that do not grow (without refill, each round keeps at most "
                    "the previous count)"
                )
            previous = previous if self.refill else keep

    def check_steps(self, num_steps: int) -> None:
        """Every pruning step falls inside the solver's ``num_steps`` steps."""
        beyond = [s for s in self.steps if s >= num_steps]
        if beyond:
            raise EnsembleSpecError(
                f"pruning.steps {list(self.steps)}: step(s) {beyond} are beyond the solver's "
                f"{num_steps} steps; use steps in [0, {num_steps - 1}]"
            )


@dataclass(frozen=True)
class Steering:
    """Heuristic Feynman-Kac steering by a measurement-loss potential (not a consistent sampler).

    Potential phi_i = -temperature ||A(x0_i) - y||^2 / (2 (sigma_y^2 + r^2)) at noise level r;
    incremental log-weights phi_k - phi_{k-1} accumulate, and the particles are resampled
    systematically when ESS < ``ess_threshold`` N, at steps in [``start``, ``end``). The
    weights leave out the proposal correction, so the particles do not converge to p(x | y) as
    N grows; the weighted solvers (``SMC``) do. Kept so that studies can compare the two.
    """

    enabled: bool = False
    ess_threshold: float = 0.5
    temperature: float = 1.0
    start: int = 0
    end: int | None = None

    def __post_init__(self) -> None:
        _check_bool("enabled", self.enabled)
        _check_fraction("ess_threshold", self.ess_threshold, allow_zero=False)
        _check_number("temperature", self.temperature, 0.0)
        _check_int("start", self.start, 0)
        if self.end is not None:
            _check_int("end", self.end, self.start + 1)


@dataclass(frozen=True)
class SMC:
    """Resampling of a weighted solver's particles (sequential Monte Carlo; docs/ensemble.md).

    A weighted solver (TDS, FPS-SMC) reports each move's log incremental importance weight; the
    ensemble accumulates them per particle and, per problem, resamples systematically when
    ESS < ``ess_threshold`` N (0: never, plain importance sampling). Ignored by unweighted
    solvers.
    """

    ess_threshold: float = 0.5

    def __post_init__(self) -> None:
        _check_fraction("ess_threshold", self.ess_threshold, allow_zero=True)


@dataclass(frozen=True)
class EnsembleSettings:
    """How many particles, where they run, how they interact and which are returned.

    ``selection``: ``all`` (every running particle), ``best`` (the ``select_k`` lowest
    measurement losses), and for weighted solvers ``weighted`` (the particles resampled by
    their final weights to ``particles`` equally weighted outputs) or ``heaviest`` (the
    ``select_k`` largest final weights).
    """

    particles: int = 1
    backend: str = "local"
    workers: int = 1
    partition: tuple[int, ...] | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    address: str | None = None
    features: str = "pixels"
    dino_model: str | None = None
    repulsion: Repulsion = field(default_factory=Repulsion)
    pruning: Pruning = field(default_factory=Pruning)
    steering: Steering = field(default_factory=Steering)
    smc: SMC = field(default_factory=SMC)
    selection: str = "all"
    select_k: int = 1
    checkpoint_every: int = 10
    checkpoint_dir: str | None = None
    max_restarts: int = 3
    progress: bool = True

    def __post_init__(self) -> None:
        _check_int("particles", self.particles, 1)
        _check_choice("backend", self.backend, BACKENDS)
        _check_int("workers", self.workers, 1)
        if self.partition is not None:
            sizes = tuple(self.partition) if isinstance(self.partition, list | tuple) else ()
            if len(sizes) != self.workers or not all(isinstance(n, int) and n >= 1 for n in sizes):
                raise EnsembleSpecError(
                    f"partition {self.partition!r} must list {self.workers} positive row counts "
                    "(one per worker)"
                )
            object.__setattr__(self, "partition", sizes)
        _check_number("cpus_per_worker", self.cpus_per_worker, 0.0)
        _check_number("gpus_per_worker", self.gpus_per_worker, 0.0)
        _check_choice("features", self.features, FEATURES)
        if self.features == "dino" and not self.dino_model:
            raise EnsembleSpecError(
                "features = 'dino' needs dino_model: a hub id (e.g. 'facebook/dinov2-small') or "
                "a local directory with a transformers ViT/DINOv2 model"
            )
        sections = (
            ("repulsion", Repulsion),
            ("pruning", Pruning),
            ("steering", Steering),
            ("smc", SMC),
        )
        for name, cls in sections:
            if not isinstance(getattr(self, name), cls):
                raise EnsembleSpecError(f"{name} must be an ensemble.{cls.__name__}")
        self.pruning.check_particles(self.particles)
        if self.steering.enabled and self.pruning.steps:
            raise EnsembleSpecError(
                "use either pruning or steering, not both (pruning.steps is set and "
                "steering.enabled is true)"
            )
        _check_choice("selection", self.selection, SELECTIONS)
        _check_int("select_k", self.select_k, 1)
        if self.selection in ("best", "heaviest") and self.select_k > self.particles:
            raise EnsembleSpecError(
                f"select_k = {self.select_k} exceeds particles = {self.particles}"
            )
        _check_int("checkpoint_every", self.checkpoint_every, 1)
        _check_int("max_restarts", self.max_restarts, 0)
        _check_bool("progress", self.progress)

    def check_solver(self, num_steps: int, weighted: bool) -> None:
        """Settings that depend on the solver: pruning steps within its ``num_steps``; weight
        selections only for weighted solvers; no loss-based pruning or steering on top of a
        weighted solver's weights (they would bias its importance weights)."""
        self.pruning.check_steps(num_steps)
        if not weighted and self.selection in WEIGHT_SELECTIONS:
            raise EnsembleSpecError(
                f"selection = {self.selection!r} needs a weighted solver (its particles carry "
                "importance weights, e.g. tds or fps_smc); use 'all' or 'best'"
            )
        if weighted and (self.pruning.steps or self.steering.enabled):
            raise EnsembleSpecError(
                "a weighted solver resamples by its own importance weights (ensemble.smc); "
                "pruning by loss or steering would bias them: remove pruning.steps and "
                "steering.enabled"
            )

    def replace(self, **changes: Any) -> EnsembleSettings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise EnsembleSpecError(f"{name} = {value!r}; allowed: {', '.join(allowed)}")


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise EnsembleSpecError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_number(name: str, value: Any, low: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= low:
        raise EnsembleSpecError(f"{name} must be a number >= {low:g}, got {value!r}")


def _check_fraction(name: str, value: Any, allow_zero: bool) -> None:
    """An ESS threshold kappa: resampling happens when ESS < kappa x particles."""
    _check_number(name, value, 0.0)
    if not (0 <= value <= 1 if allow_zero else 0 < value <= 1):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise EnsembleSpecError(
            f"{name} = {value} must lie in {interval}: resampling happens when ESS < "
            f"{name} x particles"
        )


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise EnsembleSpecError(f"{name} must be true or false, got {value!r}")
