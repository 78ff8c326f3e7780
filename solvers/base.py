"""The steppable Solver contract (docs/architecture.md, docs/solvers/index.md).

A solver advances a batch of particles step by step so that an ensemble can make them interact
between steps: ``init`` -> ``step`` x ``num_steps`` -> ``result``. ``sample`` runs that loop.
Particle i draws its randomness from its own generator seeded by (seed, i), so samples do not
depend on how particles are batched or split over workers.

A batch may hold the rows of several problems (images): ``init`` then takes one measurement per
row, one seed per row, and an operator from ``operators.stack_rows`` whose rows use their own
problem's operator. Row r is seeded by (seeds[r], indices[r]), so a row gets the same random
stream and, up to the round-off of batched kernels, the same sample in any batch.

``Solver.step`` is a template: it checks the call, hands only the running particles
(``Rows``: their x, x0, generators, force rows, extra rows, measurement and operator) to the
solver's one update ``_update(rows, k) -> Update``, writes the result back into the full state
and stops the particles whose new values are non-finite. Stopped and pruned particles cost
nothing.

Weighted solvers (``weighted = True``: the SMC samplers, docs/ensemble.md "Weighted solvers")
also report, per particle, the log incremental importance weight of each move,
log p(x' | x) + log g'(x') - log g(x) - log q(x' | x, y), as ``Update.log_weight``; their
``_init`` stores the initial weight in ``extra[LOG_WEIGHT]``. The template keeps the latest
increment there (so it moves with the particle when an ensemble copies or checkpoints it), and
the ensemble accumulates, resamples and reports the weights. Increments may omit a term that is
the same for every particle of one problem (it cancels when the weights are normalised).
"""

from __future__ import annotations

import dataclasses
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from operators import Operator
from solvers.config import SolverConfig
from solvers.preset import Preset
from solvers.priors.base import Prior

STATUS_OK = 0
STATUS_NONFINITE = 1
STATUS_PRUNED = 2  # set by an ensemble: the particle lost a pruning round and is not stepped
LOG_WEIGHT = "log_weight"  # extra key: a weighted solver's latest log incremental weight
STATUS_NAMES = {
    STATUS_OK: "ok",
    STATUS_NONFINITE: "stopped: non-finite values",
    STATUS_PRUNED: "stopped: pruned by measurement loss",
}


class SolverInputError(ValueError):
    """Input that does not fit a solver (y shape, prior kind, preset); names the fix."""


def particle_seed(seed: int, index: int) -> int:
    """The seed of particle ``index`` in a run seeded by ``seed`` (a fixed integer hash)."""
    mixed = (int(seed) * 0x9E3779B97F4A7C15 + int(index) * 0xBF58476D1CE4E5B9) % (2**63 - 1)
    return mixed ^ (mixed >> 31)


def particle_generators(seed: int | Sequence[int], indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per particle index, seeded by one run seed or by one seed per row."""
    seeds = [seed] * len(indices) if isinstance(seed, numbers.Integral) else seed
    return [
        torch.Generator().manual_seed(particle_seed(s, i))
        for s, i in zip(seeds, indices, strict=True)
    ]


def measurement_rows(y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The measurement of the batch rows ``index``: ``y`` itself when one measurement (one row)
    serves every row, else its rows ``index``."""
    return y if y.shape[0] == 1 else y[index.to(y.device)]


def finite_residuals(
    operator: Operator, image: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ok, r): the rows of ``image`` without NaN/inf, and r = A(image_i) - y_i of those rows
    flattened, with the rows' own ``operator`` and ``y``; r is None when no row is finite. A
    failed particle costs no operator call and does not spread NaN into the others' gradients."""
    ok = finite_rows(image)
    if not bool(ok.any()):
        return ok, None
    kept = ok.nonzero().flatten()
    return ok, (operator.take_rows(kept)(image[ok]) - measurement_rows(y, kept)).flatten(1)


def per_row(
    operator: Operator, values: dict[Operator, float], like: torch.Tensor
) -> float | torch.Tensor:
    """A per-problem number for the rows of ``operator``: ``values[part]`` for each problem's
    operator (``Operator.row_groups``); one float when every row shares it, else a (rows,)
    tensor of ``like``'s dtype and device."""
    groups = operator.row_groups()
    numbers = [values[part] for part, _ in groups]
    if all(v == numbers[0] for v in numbers):
        return numbers[0]
    out = like.new_empty(like.shape[0])
    for (_, rows), value in zip(groups, numbers, strict=True):
        assert rows is not None  # several problems: each group names its rows
        out[rows.to(out.device)] = value
    return out


def particle_randn(generators: Sequence[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise shaped like ``like``, row i drawn from ``generators[i]``."""
    shape = tuple(like.shape[1:])
    rows = [torch.randn(shape, generator=g) for g in generators]
    return torch.stack(rows).to(device=like.device, dtype=like.dtype)


@dataclass
class State:
    """Particles of one solver run: per-particle tensors share dim 0.

    ``x``: the sampling-space state; ``x0``: the current clean estimate in image space;
    ``status``: per-particle status codes; ``extra``: solver-specific per-particle tensors;
    ``generators``: per-particle random generators; ``indices`` identify particles.
    ``y``: one measurement for every row (leading size 1) or one per row; ``operator``: the
    operator of these rows (set by ``init``; None: the solver's), per row for several problems.
    """

    x: torch.Tensor
    x0: torch.Tensor
    generators: list[torch.Generator]
    indices: list[int]
    status: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    y: torch.Tensor | None = None
    operator: Operator | None = None

    @property
    def n(self) -> int:
        return self.x.shape[0]

    def select(self, indices: Sequence[int] | torch.Tensor) -> State:
        """A new state holding copies of the particles at ``indices`` (repeats allowed).

        Tensors are copied and generator states cloned, so a repeated index yields identical
        copies with identical random streams: ``reseed`` the duplicates to let them diverge.
        Per-row measurements and operators go with their rows.
        """
        index = torch.as_tensor(list(map(int, indices)), dtype=torch.long)
        generators = []
        for i in index.tolist():
            g = torch.Generator()
            g.set_state(self.generators[i].get_state())
            generators.append(g)
        return State(
            x=self.x[index].clone(),
            x0=self.x0[index].clone(),
            generators=generators,
            indices=[self.indices[i] for i in index.tolist()],
            status=self.status[index].clone(),
            extra={k: v[index].clone() for k, v in self.extra.items()},
            y=None if self.y is None else measurement_rows(self.y, index),
            operator=None if self.operator is None else self.operator.take_rows(index),
        )

    def reseed(self, positions: Sequence[int], seeds: Sequence[int]) -> None:
        """Give the particles at ``positions`` fresh random streams seeded by ``seeds``."""
        for position, seed in zip(positions, seeds, strict=True):
            self.generators[position] = torch.Generator().manual_seed(int(seed))

    def mark_nonfinite(self) -> None:
        """Stop particles whose state or estimate holds NaN/inf (their values are frozen)."""
        bad = (~finite_rows(self.x) | ~finite_rows(self.x0)).to(self.status.device)
        self.status = torch.where(bad, torch.full_like(self.status, STATUS_NONFINITE), self.status)

    @property
    def active(self) -> torch.Tensor:
        """Boolean mask of particles still running."""
        return self.status == STATUS_OK


@dataclass
class Rows:
    """The running particles of one step, as ``Solver.step`` hands them to ``_update``.

    ``x``, ``x0``, ``extra``: their rows of the state; ``generators``: their random streams;
    ``force``: their rows of the step's extra drift (None without one); ``y``: their
    measurement (one row shared by all, or one per row); ``operator``: their operator, which
    ``_update`` uses instead of ``self.operator`` (rows of several problems may differ).
    """

    x: torch.Tensor
    x0: torch.Tensor
    generators: list[torch.Generator]
    force: torch.Tensor | None
    extra: dict[str, torch.Tensor]
    y: torch.Tensor
    operator: Operator


@dataclass
class Update:
    """The new values of the rows handed to ``_update``.

    ``extra``: new rows of (some of) the state's extra tensors. ``failed``: rows to stop as
    non-finite even though ``x`` and ``x0`` are finite (a solver that keeps a failed particle's
    last finite values returns those together with ``failed``); rows whose ``x`` or ``x0`` is
    non-finite are stopped in any case. ``log_weight``: a weighted solver's log incremental
    weight of each row's move (float64); a non-finite value stops nothing (the ensemble gives
    the particle weight zero).
    """

    x: torch.Tensor
    x0: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    failed: torch.Tensor | None = None
    log_weight: torch.Tensor | None = None


def finite_rows(t: torch.Tensor) -> torch.Tensor:
    """Rows of ``t`` without NaN/inf."""
    return torch.isfinite(t.flatten(1)).all(1)


def _put_rows(full: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``full`` with ``full[rows] = values`` (a new tensor; ``values`` itself when all rows)."""
    values = values.detach().to(dtype=full.dtype, device=full.device)
    if rows.numel() == full.shape[0]:
        return values
    out = full.clone()
    out[rows] = values
    return out


@dataclass
class Result:
    """Output of ``Solver.sample``."""

    samples: torch.Tensor
    status: list[str]
    nfe: int
    seconds: float
    traces: dict[str, list[Any]]
    # a weighted solver's accumulated log-weights (no resampling: plain importance sampling);
    # None for unweighted solvers
    log_weights: torch.Tensor | None = None


class Solver:
    """Base class. Subclasses set ``name``, ``config_class`` and implement ``_init``/``_update``.

    Register a subclass with ``solvers.registry.register`` to make ``solvers.build`` know it.
    """

    name: ClassVar[str] = "solver"
    config_class: ClassVar[type[SolverConfig]] = SolverConfig
    latent: ClassVar[bool | None] = None  # True: latent priors only, False: pixel only
    linear_only: ClassVar[bool] = False
    weighted: ClassVar[bool] = False  # reports log incremental weights (module docstring)

    def __init__(self, config: SolverConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        self.preset: str | None = None  # set by ``build``
        self.preset_info: Preset | None = None  # set by ``build``; checked against the problem
        self.prior: Prior | None = None
        self.operator: Operator | None = None
        # the per-row run seeds of the latest ``init``, set before ``_init`` (a solver that needs
        # them later, e.g. for randomness shared by a problem's rows, keeps them in state.extra)
        self.row_seeds: list[int] = []

    # -- the contract ---------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def init(
        self,
        prior: Prior,
        operator: Operator,
        y: torch.Tensor,
        n: int = 1,
        seed: int | torch.Generator | Sequence[int] = 0,
        indices: Sequence[int] | None = None,
    ) -> State:
        """Start ``n`` particles (or the R = len(indices) particles ``indices``).

        ``y``: one measurement, ``(1, *output_shape)`` or ``output_shape``, for every row, or one
        per row, ``(R, *output_shape)``. ``seed``: the run seed, or one seed per row. Row r draws
        from a generator seeded by ``particle_seed(seed_r, indices[r])``. ``operator`` acts
        row-wise; ``operators.stack_rows`` gives each problem's rows their own operator.
        """
        self.check_problem(prior, operator, y)
        indices = list(range(n)) if indices is None else [int(i) for i in indices]
        rows = len(indices)
        if rows < 1:
            raise SolverInputError(f"{self.name}: init needs at least one particle (n >= 1)")
        seeds = _row_seeds(seed, rows, self.name)
        y = y if y.dim() == len(operator.output_shape) + 1 else y.unsqueeze(0)
        if y.shape[0] not in (1, rows):
            raise SolverInputError(
                f"{self.name}: y holds {y.shape[0]} measurements for {rows} rows; pass one "
                f"measurement for every row or one per row, shape ({rows}, "
                f"{', '.join(map(str, operator.output_shape))})"
            )
        if operator.row_count is not None and operator.row_count != rows:
            raise SolverInputError(
                f"{self.name}: the operator serves {operator.row_count} rows (stack_rows) but "
                f"init starts {rows}; stack it with the rows of this batch"
            )
        if operator.row_count is not None and y.shape[0] == 1:
            y = y.expand(rows, *y.shape[1:]).clone()  # the rows' operators need a y per row
        self.prior, self.operator, self.row_seeds = prior, operator, seeds
        state = self._init(particle_generators(seeds, indices), indices, y)
        state.operator = operator
        return state

    def _init(
        self, generators: list[torch.Generator], indices: list[int], y: torch.Tensor
    ) -> State:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, state: State, k: int, force: torch.Tensor | None = None) -> State:
        """Advance every active particle by step ``k``; ``force`` is an extra drift.

        Returns a new State; the stopped and pruned particles are left as they are (their
        random streams are not drawn from).
        """
        if self.prior is None or self.operator is None:
            raise SolverInputError(f"{self.name}: call init(prior, operator, y, ...) before step")
        self.check_step(state, k, force)
        rows = state.active.nonzero().flatten()
        if rows.numel() == 0:
            return state
        assert state.y is not None
        operator = state.operator if state.operator is not None else self.operator
        if rows.numel() == state.n:  # every particle runs: no copies
            batch = Rows(
                state.x, state.x0, state.generators, force, dict(state.extra), state.y, operator
            )
        else:
            at = rows.to(state.x.device)
            batch = Rows(
                x=state.x[at],
                x0=state.x0[at],
                generators=[state.generators[i] for i in rows.tolist()],
                force=None if force is None else force[at.to(force.device)],
                extra={key: value[at] for key, value in state.extra.items()},
                y=measurement_rows(state.y, at),
                operator=operator.take_rows(rows),
            )
        update = self._update(batch, k)
        failed = ~finite_rows(update.x) | ~finite_rows(update.x0)
        if update.failed is not None:
            failed = failed | update.failed
        status = state.status.clone()
        status[rows[failed.to(rows.device)]] = STATUS_NONFINITE
        extra = dict(state.extra)
        changes = dict(update.extra)
        if self.weighted:
            if update.log_weight is None:
                raise RuntimeError(f"{self.name} is weighted but its update has no log_weight")
            changes[LOG_WEIGHT] = update.log_weight.to(torch.float64)
        for key, value in changes.items():
            extra[key] = _put_rows(state.extra[key], rows.to(value.device), value)
        return dataclasses.replace(
            state,
            x=_put_rows(state.x, rows.to(state.x.device), update.x),
            x0=_put_rows(state.x0, rows.to(state.x0.device), update.x0),
            status=status,
            extra=extra,
        )

    def _update(self, rows: Rows, k: int) -> Update:
        """Step ``k`` of the running particles ``rows`` (the one per-solver update)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def check_step(self, state: State, k: int, force: torch.Tensor | None) -> None:
        """Refuse a step index outside [0, num_steps) and a force not shaped like the state."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.num_steps:
            raise SolverInputError(
                f"{self.name}: step index k must be an integer in [0, {self.num_steps}), got {k!r}"
            )
        if force is not None and tuple(force.shape) != tuple(state.x.shape):
            raise SolverInputError(
                f"{self.name}: force has shape {tuple(force.shape)}; it must match the state's "
                f"x {tuple(state.x.shape)}"
            )

    def result(self, state: State) -> torch.Tensor:
        """Final samples in image space."""
        return state.x0

    def sample(
        self,
        prior: Prior,
        operator: Operator,
        y: torch.Tensor,
        n: int = 1,
        seed: int | torch.Generator = 0,
        callback: Callable[[int, State], None] | None = None,
    ) -> Result:
        """Run the whole loop and collect per-step traces (measurement loss, noise level)."""
        start_nfe = prior.nfe
        start = time.perf_counter()
        state = self.init(prior, operator, y, n, seed)
        traces: dict[str, list[Any]] = {"loss": [], "sigma": []}
        log_weights = self.log_weight(state)
        for k in range(self.num_steps):
            state = self.step(state, k)
            if log_weights is not None:
                log_weights = log_weights + self.log_weight(state)
            traces["loss"].append(self.measurement_loss(state).tolist())
            traces["sigma"].append(self.noise_level(k))
            if callback is not None:
                callback(k, state)
        samples = self.result(state)
        return Result(
            samples=samples.detach(),
            status=[STATUS_NAMES[int(s)] for s in state.status],
            nfe=prior.nfe - start_nfe,
            seconds=time.perf_counter() - start,
            traces=traces,
            log_weights=log_weights,
        )

    def log_weight(self, state: State) -> torch.Tensor | None:
        """The latest log incremental weight per particle (float64, CPU; -inf for stopped
        particles); None for an unweighted solver."""
        if not self.weighted:
            return None
        if LOG_WEIGHT not in state.extra:
            raise RuntimeError(f"{self.name} is weighted but its init set no extra[{LOG_WEIGHT!r}]")
        value = state.extra[LOG_WEIGHT].detach().to("cpu", torch.float64)
        value = torch.nan_to_num(value, nan=float("-inf"), posinf=float("-inf"))
        return torch.where(state.active.cpu(), value, torch.full_like(value, float("-inf")))

    def lookahead_loss(self, state: State, k: int) -> torch.Tensor:
        """||A(x0_hat) - y||^2 per particle of the denoised estimate x0_hat of the state before
        step ``k`` (one extra denoiser call per running particle; inf for stopped ones): the
        lookahead ranking that pruning can use instead of the current estimate's loss."""
        operator = state.operator if state.operator is not None else self.operator
        assert operator is not None and state.y is not None
        loss = torch.full((state.n,), float("inf"), dtype=torch.float64)
        rows = state.active.cpu().nonzero().flatten()
        if rows.numel() == 0:
            return loss
        at = rows.to(state.x.device)
        with torch.no_grad():
            image = self.denoised(state.x[at], k)
            values = operator.take_rows(rows).loss(image, measurement_rows(state.y, at))
        loss[rows] = values.detach().to("cpu", torch.float64)
        return torch.nan_to_num(loss, nan=float("inf"), posinf=float("inf"))

    def denoised(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The denoised estimate E[x0 | x] in image space of states ``x`` before step ``k``.

        Solvers that run a diffusion chain implement it; the others cannot rank by lookahead.
        """
        raise SolverInputError(
            f"{self.name} has no denoised estimate of its state; rank pruning by 'estimate'"
        )

    # -- helpers shared by solvers ----------------------------------------------------------------
    def noise_level(self, k: int) -> float:
        """The noise level after step ``k`` (for traces); 0 where a solver has none."""
        return 0.0

    def measurement_loss(self, state: State) -> torch.Tensor:
        """||A(x0) - y||^2 per particle with its own y and operator (inf for stopped ones)."""
        operator = state.operator if state.operator is not None else self.operator
        assert operator is not None and state.y is not None
        active = state.active.to(state.x0.device)  # status may stay on the CPU
        with torch.no_grad():
            safe = torch.where(active.view(-1, *([1] * (state.x0.dim() - 1))), state.x0, 0.0)
            loss = operator.loss(safe, state.y)
        return torch.where(active.to(loss.device), loss, torch.full_like(loss, float("inf")))

    def check_problem(self, prior: Prior, operator: Operator, y: torch.Tensor) -> None:
        """Raise ``SolverInputError`` for a prior/operator/measurement this solver cannot use."""
        if self.latent is True and not prior.is_latent:
            raise SolverInputError(f"{self.name} needs a latent prior; got a pixel prior")
        if self.latent is False and prior.is_latent:
            raise SolverInputError(
                f"{self.name} works in pixel space; use its latent variant for latent priors"
            )
        if self.linear_only and not operator.is_linear:
            raise SolverInputError(f"{self.name} needs a linear operator; {operator.name} is not")
        if not isinstance(y, torch.Tensor) or not y.is_floating_point():
            raise SolverInputError("y must be a floating-point tensor")
        if tuple(y.shape) != operator.output_shape and (
            y.dim() != len(operator.output_shape) + 1
            or tuple(y.shape[1:]) != operator.output_shape
            or y.shape[0] < 1
        ):
            raise SolverInputError(
                f"y has shape {tuple(y.shape)}; {operator.name} measures {operator.output_shape} "
                "(one measurement, optionally with a leading batch dimension of 1, or one "
                "measurement per row: (rows, *output_shape))"
            )
        if not bool(torch.isfinite(y).all()):
            raise SolverInputError("y contains NaN or infinite values")
        if self.preset is not None and self.preset_info is not None:
            problem = self.preset_info.mismatch(self.preset, prior.is_latent, operator.name)
            if problem is not None:
                raise SolverInputError(f"{self.name}: {problem}")


def _row_seeds(seed: int | torch.Generator | Sequence[int], rows: int, name: str) -> list[int]:
    """One run seed per row: a generator draws one seed for all rows; a sequence gives one each."""
    if isinstance(seed, torch.Generator):
        return [int(torch.randint(0, 2**62, (1,), generator=seed).item())] * rows
    if isinstance(seed, torch.Tensor) and seed.dim() == 0:
        seed = int(seed)
    if isinstance(seed, Sequence | torch.Tensor) and not isinstance(seed, str):
        seeds = [int(s) for s in seed]
        if len(seeds) != rows:
            raise SolverInputError(
                f"{name}: seed lists {len(seeds)} seeds for {rows} rows; give one seed per row "
                "(the seed of the row's problem) or one int for all"
            )
        return seeds
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise SolverInputError(
            f"{name}: seed must be an int, a torch.Generator or one int per row, got {seed!r}"
        )
    return [int(seed)] * rows
