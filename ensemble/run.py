"""The step-synchronous ensemble loop on the driver (docs/ensemble.md).

A run holds one or several problems (images), each with ``particles`` rows; every interaction
(repulsion, pruning, SMC resampling, final selection) and every trace is per problem. Each
outer step k: one barrier gathers every group's measurement losses (and features where
repulsion acts); the driver prunes (top-k) or resamples (SMC) and copies survivors' states into
freed slots (a weighted solver's particles: by their accumulated importance weights, see
``_reweight``); it computes the repulsion push in feature space and scatters it; each group pulls
its push back to its particles and calls ``solver.step(state, k, force)``. Every
``checkpoint_every`` steps the particles and the driver's own state are snapshotted (in memory,
and on disk with ``checkpoint_dir``): a dead worker rolls the run back to the snapshot, and a
stopped run resumes from disk, with the same samples as an undisturbed run.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ensemble.backends import LocalBackend, RayBackend, WorkerLostError, make_backend
from ensemble.group import copy_seed
from ensemble.interaction import (
    effective_sample_size,
    place_copies,
    rbf_repulsion,
    smc_log_potential,
    spearman,
    systematic_resample,
    top_k_ancestors,
)
from ensemble.payload import concat_payloads, nbytes, take_rows
from ensemble.spec import EnsembleSpec
from solvers.base import STATUS_NAMES, STATUS_OK, particle_seed

_log = logging.getLogger("dipswarm.ensemble")

CHECKPOINT_FILE = "ensemble_checkpoint.pt"
_SMC_SALT = 0x5EC
_SELECTION_SALT = 0x5E1EC7


@dataclass
class EnsembleResult:
    """Samples and diagnostics of one problem of an ensemble run."""

    samples: torch.Tensor  # the selected samples, (len(selected), *image shape)
    all_samples: torch.Tensor  # every particle's final sample, (N, *image shape)
    loss: torch.Tensor  # final measurement loss per particle (inf for stopped particles)
    status: list[str]
    selected: list[int]  # indices into all_samples (repeats where "weighted" resampled)
    origin: list[int]  # the initial particle each particle slot descends from
    nfe: int  # network evaluations per particle behind the delivered samples
    # network evaluations per particle spent, recomputation after a worker loss included (the
    # calls the surviving workers made between the last snapshot and the loss)
    nfe_spent: int
    seconds: float
    traces: dict[str, list[Any]]
    # setup seconds (backend, workers, prior loading, init: before the first step), loop/
    # compute/coordination seconds (coordination = loop - compute: driver work, transfers,
    # waiting, checkpoints), bytes moved between driver and workers, network calls, restarts;
    # shared by the problems of one run
    stats: dict[str, float]
    # a weighted solver's final importance weights per particle, normalised (log-sum-exp 0);
    # None for unweighted solvers
    log_weights: torch.Tensor | None = None


def _empty_traces() -> dict[str, list[Any]]:
    return {"loss_best": [], "alive": [], "sigma": [], "ess": [], "moves": []}


@dataclass
class DriverState:
    """What the driver carries between steps (checkpointed with the particles).

    ``origin``, ``log_weights``, ``potential``: per global row slot; ``traces``: per problem.
    ``log_weights``: the weights accumulated since the last resampling (a weighted solver's
    importance weights, or steering's potential increments); ``potential``: steering's last
    potential.
    ``nfe``: network calls per particle made before the groups' call counts last restarted (at
    a restore), so a resumed or recovered run reports the nfe of an undisturbed one.
    """

    step: int
    origin: torch.Tensor
    problems: int = 1
    log_weights: torch.Tensor | None = None
    potential: torch.Tensor | None = None
    traces: list[dict[str, list[Any]]] = field(default_factory=list)
    nfe: int = 0

    def __post_init__(self) -> None:
        if not self.traces:
            self.traces = [_empty_traces() for _ in range(self.problems)]


class Ensemble:
    """Runs one ``EnsembleSpec``; ``run(callback)`` calls ``callback(k, self)`` after step k."""

    def __init__(
        self,
        spec: EnsembleSpec,
        backend: Callable[[EnsembleSpec], LocalBackend | RayBackend] = make_backend,
    ) -> None:
        """``backend`` makes the groups' backend from the spec (by ``settings.backend``); the
        job pool (ensemble/pool.py) passes one that keeps its prior between runs."""
        self.spec = spec
        self.make_backend = backend
        self.settings = spec.settings
        solver = spec.solver.build()
        self.num_steps, self.weighted = solver.num_steps, solver.weighted
        spec.settings.check_solver(self.num_steps, self.weighted)
        self.backend: LocalBackend | RayBackend | None = None
        # compute: the slowest worker's time inside observe + step, summed over steps;
        # loop: driver wall time of the step loop (checkpoints and recoveries included)
        self.stats = {"compute_seconds": 0.0, "loop_seconds": 0.0, "bytes": 0.0}
        self.restarts = 0
        self.nfe_lost = 0  # calls per particle rolled back by recoveries (in nfe_spent only)
        self._nfe_base = 0  # the driver's nfe at the groups' last count restart (a restore)

    def _blocks(self) -> list[slice]:
        """The global row slots of each problem."""
        m = self.settings.particles
        return [slice(p * m, (p + 1) * m) for p in range(self.spec.problems)]

    # -- the loop --------------------------------------------------------------------------------
    def run(
        self, callback: Callable[[int, Ensemble], None] | None = None, resume: bool = False
    ) -> EnsembleResult:
        """Run a single-problem spec; ``run_all`` returns every problem's result."""
        if self.spec.problems != 1:
            raise ValueError(
                f"this spec holds {self.spec.problems} problems; use run_all (one result each)"
            )
        return self.run_all(callback, resume)[0]

    def run_all(
        self, callback: Callable[[int, Ensemble], None] | None = None, resume: bool = False
    ) -> list[EnsembleResult]:
        """Run every problem of the spec; one result per problem, in the spec's order."""
        began = time.perf_counter()
        self.backend = backend = self.make_backend(self.spec)
        try:
            snapshot = self._load_checkpoint() if resume else None
            if snapshot is None:
                backend.call("start")
                # the groups' call counts keep the calls of ``init``: the live driver carries
                # none (the snapshot's count is for a restore, which restarts the groups')
                driver = DriverState(0, torch.arange(self.spec.rows), self.spec.problems)
                snapshot = self._snapshot(driver)
            else:
                self._restore(snapshot)
                driver = copy.deepcopy(snapshot["driver"])
            progress = _progress(self.spec, self.num_steps, driver.step)
            loop_began = time.perf_counter()
            # worker start, prior loading, init or restore: warm-up, apart from the steps' time
            self.stats["setup_seconds"] = loop_began - began
            while driver.step < self.num_steps:
                try:
                    self._step(driver)
                except WorkerLostError:
                    driver = self._recover(snapshot, driver.step)
                    progress.reset(total=self.num_steps)
                    progress.update(driver.step)
                    continue
                driver.step += 1
                progress.update(1)
                progress.set_postfix(
                    alive=sum(t["alive"][-1] for t in driver.traces),
                    best=f"{min(t['loss_best'][-1] for t in driver.traces):.4g}",
                )
                if (
                    driver.step % self.settings.checkpoint_every == 0
                    or driver.step == self.num_steps
                ):
                    snapshot = self._snapshot(driver)
                if callback is not None:
                    callback(driver.step, self)
            progress.close()
            self.stats["loop_seconds"] = time.perf_counter() - loop_began
            return self._finish(driver, time.perf_counter() - began)
        finally:
            backend.shutdown()

    def _step(self, driver: DriverState) -> None:
        k, backend = driver.step, self._backend()
        repulsion, pruning = self.settings.repulsion, self.settings.pruning
        ranks_ahead = pruning.rank_by == "lookahead" and k in pruning.steps
        lookahead = pruning.diagnostics or ranks_ahead
        observed = backend.call("observe", [(k, repulsion, lookahead)] * len(backend.partition))
        loss = torch.cat([o["loss"] for o in observed])
        ahead = _cat_or_none([o["lookahead_loss"] for o in observed])
        ranking = ahead if ranks_ahead and ahead is not None else loss
        status = torch.cat([o["status"] for o in observed])
        sigma = float(observed[0]["sigma"])
        sigma_y = float(observed[0]["sigma_y"])
        ancestors = torch.arange(self.spec.rows)
        changed, stopped = False, torch.zeros(self.spec.rows, dtype=torch.bool)
        increments = _cat_or_none([o["log_weight"] for o in observed])
        for p, block in enumerate(self._blocks()):
            if increments is not None:
                chosen = self._reweight(driver, p, k, increments[block])
            else:
                chosen = self._select(driver, p, k, ranking[block], status[block], sigma_y, sigma)
            if isinstance(chosen, tuple):  # pruning without refill: the losers stop
                stopped[block] = chosen[1]
            elif chosen is not None:
                ancestors[block] = chosen + block.start
                changed = True
        moved = [0] * self.spec.problems
        if bool(stopped.any()):
            self._prune(stopped)
        if k in pruning.steps and not pruning.refill:
            status = torch.cat(backend.call("statuses"))  # the losers were just stopped
        if changed:
            moved = self._move(ancestors, k)
            driver.origin = driver.origin[ancestors]
            if sum(moved) and observed[0]["features"] is not None:
                observed = backend.call("observe", [(k, repulsion, False)] * len(observed))
                status = torch.cat([o["status"] for o in observed])
        pushes = self._pushes(observed, status)
        spent = backend.call("step", [(k, push, repulsion.weight) for push in pushes])
        compute = max(o["seconds"] + s for o, s in zip(observed, spent, strict=True))
        self.stats["compute_seconds"] += compute
        self.stats["bytes"] += nbytes([o for o in observed]) + nbytes(pushes)
        for p, block in enumerate(self._blocks()):
            alive = status[block] == STATUS_OK
            problem_loss = loss[block]
            traces = driver.traces[p]
            traces["loss_best"].append(
                float(problem_loss[alive].min()) if alive.any() else float("inf")
            )
            traces["alive"].append(int(alive.sum()))
            traces["sigma"].append(sigma)
            weights = None if driver.log_weights is None else driver.log_weights[block]
            traces["ess"].append(_ess_or_none(weights))
            traces["moves"].append(moved[p])
            if pruning.diagnostics:
                assert ahead is not None
                traces.setdefault("particle_loss", []).append(problem_loss.tolist())
                traces.setdefault("particle_lookahead_loss", []).append(ahead[block].tolist())

    # -- interaction -----------------------------------------------------------------------------
    def _select(
        self,
        driver: DriverState,
        problem: int,
        k: int,
        loss: torch.Tensor,
        status: torch.Tensor,
        sigma_y: float,
        sigma: float,
    ) -> torch.Tensor | tuple[None, torch.Tensor] | None:
        """Problem ``problem``'s selection at step k: its ancestors (particle indices within the
        problem), ``(None, stop mask)`` for pruning without refill, or None (no change)."""
        settings = self.settings
        loss = torch.where(status == STATUS_OK, loss, torch.full_like(loss, float("inf")))
        pruning = settings.pruning
        if k in pruning.steps:
            keep = pruning.keep[pruning.steps.index(k)]
            keep = min(keep, int((status == STATUS_OK).sum())) or 1
            ancestors, kept = top_k_ancestors(loss, keep, pruning.refill)
            if not pruning.refill:
                return None, (~kept) & (status == STATUS_OK)
            return ancestors
        steering = settings.steering
        end = steering.end if steering.end is not None else self.num_steps
        if not steering.enabled or not steering.start <= k < end:
            return None
        block = self._blocks()[problem]
        phi = smc_log_potential(loss, sigma_y, sigma, steering.temperature)
        if driver.potential is None or driver.log_weights is None:  # NaN: not started yet
            driver.log_weights = torch.zeros(self.spec.rows, dtype=torch.float64)
            driver.potential = torch.full((self.spec.rows,), float("nan"), dtype=torch.float64)
        if bool(torch.isnan(driver.potential[block]).all()):
            driver.potential[block] = phi
            return None
        increment = torch.where(torch.isfinite(phi), phi - driver.potential[block], float("-inf"))
        log_weights = torch.nan_to_num(driver.log_weights[block] + increment, nan=float("-inf"))
        driver.log_weights[block] = log_weights
        driver.potential[block] = phi
        ancestors = self._resample_if_degenerate(problem, k, log_weights, steering.ess_threshold)
        if ancestors is None:
            return None
        driver.log_weights[block] = 0.0
        driver.potential[block] = phi[ancestors]
        return ancestors

    def _reweight(
        self, driver: DriverState, problem: int, k: int, increments: torch.Tensor
    ) -> torch.Tensor | None:
        """A weighted solver's problem ``problem`` before step k: add the increments of its
        last move (or, at k = 0, its initial weights) to the particles' log-weights and, when
        ESS < smc.ess_threshold N, resample them systematically (weights reset to equal).
        Returns the ancestors, or None (no resampling)."""
        if driver.log_weights is None:
            driver.log_weights = torch.zeros(self.spec.rows, dtype=torch.float64)
        block = self._blocks()[problem]
        log_weights = driver.log_weights[block] + increments
        driver.log_weights[block] = log_weights
        ancestors = self._resample_if_degenerate(
            problem, k, log_weights, self.settings.smc.ess_threshold
        )
        if ancestors is not None:
            driver.log_weights[block] = 0.0
        return ancestors

    def _resample_if_degenerate(
        self, problem: int, k: int, log_weights: torch.Tensor, threshold: float
    ) -> torch.Tensor | None:
        """Systematic resampling of one problem's particles when ESS < threshold N (one
        uniform per problem and step, from the problem's seed), arranged by ``place_copies``;
        None when the ESS is high enough or no particle has a finite weight."""
        if not torch.isfinite(log_weights).any():
            return None
        if effective_sample_size(log_weights) >= threshold * log_weights.numel():
            return None
        return place_copies(systematic_resample(log_weights, _uniform(self.spec.seeds[problem], k)))

    def _pushes(self, observed: list[dict[str, Any]], status: torch.Tensor) -> list[Any]:
        """Per-group repulsion pushes (None where repulsion does not act at this step); each
        problem's running particles repel only each other."""
        if observed[0]["features"] is None:
            return [None] * len(observed)
        features = torch.cat([o["features"] for o in observed])
        push = torch.zeros_like(features)
        for block in self._blocks():
            alive = (status[block] == STATUS_OK).nonzero().flatten() + block.start
            if alive.numel() >= 2:
                push[alive] = rbf_repulsion(features[alive], self.settings.repulsion.svgd)
        sizes = [len(slots) for slots in self._backend().partition]
        return list(torch.split(push, sizes))

    def _move(self, ancestors: torch.Tensor, k: int) -> list[int]:
        """Copy ancestors' states into the slots that need them; the copies per problem."""
        backend = self._backend()
        slots = [i for i in range(self.spec.rows) if int(ancestors[i]) != i]
        moved = [0] * self.spec.problems
        if not slots:
            return moved
        where = {s: (g, p) for g, part in enumerate(backend.partition) for p, s in enumerate(part)}
        sources = sorted({int(ancestors[i]) for i in slots})
        wanted: list[list[int]] = [[] for _ in backend.partition]
        for source in sources:
            wanted[where[source][0]].append(where[source][1])
        exported = backend.call("export", [(rows,) for rows in wanted])
        row_of = {}
        for g, rows in enumerate(wanted):
            for r, position in enumerate(rows):
                row_of[backend.partition[g][position]] = (g, r)
        spec, assignments = self.spec, []
        for g in range(len(backend.partition)):
            targets = [s for s in slots if where[s][0] == g]
            rows = [row_of[int(ancestors[s])] for s in targets]
            payload = None
            if rows:
                payload = concat_payloads([take_rows(exported[src], [r]) for src, r in rows])
            seeds = [
                copy_seed(spec.seeds[spec.problem_of(s)], spec.particle_of(s), k) for s in targets
            ]
            assignments.append(([where[s][1] for s in targets], payload, seeds))
        backend.call("assign", assignments)
        self.stats["bytes"] += nbytes(exported) + nbytes(assignments)
        for s in slots:
            moved[spec.problem_of(s)] += 1
        return moved

    def _prune(self, stop: torch.Tensor) -> None:
        backend = self._backend()
        calls = [([p for p, s in enumerate(part) if bool(stop[s])],) for part in backend.partition]
        backend.call("prune", calls)

    # -- checkpoints -----------------------------------------------------------------------------
    def _snapshot(self, driver: DriverState) -> dict[str, Any]:
        payloads = self._backend().call("snapshot")
        saved = copy.deepcopy(driver)
        saved.nfe += int(max(self._backend().call("nfe")))  # the calls up to this snapshot
        snapshot = {"driver": saved, "particles": concat_payloads(payloads)}
        self.stats["bytes"] += nbytes(payloads)
        if self.settings.checkpoint_dir is not None:
            folder = Path(self.settings.checkpoint_dir)
            folder.mkdir(parents=True, exist_ok=True)
            temporary = folder / (CHECKPOINT_FILE + ".tmp")
            torch.save({**snapshot, "fingerprint": self._fingerprint()}, temporary)
            os.replace(temporary, folder / CHECKPOINT_FILE)
        return snapshot

    def _restore(self, snapshot: dict[str, Any]) -> None:
        backend = self._backend()
        payloads = [take_rows(snapshot["particles"], part) for part in backend.partition]
        backend.call("restore", [(p,) for p in payloads])
        self._nfe_base = snapshot["driver"].nfe

    def _recover(self, snapshot: dict[str, Any], step: int) -> DriverState:
        """Replace dead workers and roll every group back to the last snapshot (one line on the
        ``dipswarm.ensemble`` logger says so)."""
        self.restarts += 1
        if self.restarts > self.settings.max_restarts:
            raise RuntimeError(
                f"workers died {self.restarts} times (max_restarts = "
                f"{self.settings.max_restarts}); the last checkpoint is kept"
                + (f" in {self.settings.checkpoint_dir}" if self.settings.checkpoint_dir else "")
            )
        replaced = self._backend().respawn()
        # the survivors' calls after the snapshot are redone (fresh workers count 0); their
        # count runs from the last restore, the snapshot holds the calls up to it
        since_restore = int(max(self._backend().call("nfe")))
        self.nfe_lost += max(since_restore - (snapshot["driver"].nfe - self._nfe_base), 0)
        self._restore(snapshot)
        back = snapshot["driver"].step
        _log.warning(
            f"dipswarm: Ray worker {', '.join(map(str, replaced)) or '?'} of "
            f"{len(self._backend().partition)} died at step {step} of {self.num_steps}; "
            f"replaced, continuing from step {back} (restart {self.restarts} of at most "
            f"{self.settings.max_restarts})"
        )
        return copy.deepcopy(snapshot["driver"])

    def _load_checkpoint(self) -> dict[str, Any] | None:
        if self.settings.checkpoint_dir is None:
            raise ValueError("resume needs checkpoint_dir: the folder a previous run wrote to")
        path = Path(self.settings.checkpoint_dir) / CHECKPOINT_FILE
        if not path.is_file():
            return None
        saved = torch.load(path, weights_only=False)
        if saved.get("fingerprint") != self._fingerprint():
            raise ValueError(
                f"{path} belongs to a different run (solver, prior, operator, y, particles or "
                "seed differ); use another checkpoint_dir or remove the file"
            )
        return saved

    def _fingerprint(self) -> str:
        spec = self.spec
        solver = spec.solver
        parts = [
            solver.name,
            solver.preset,
            sorted(dict(solver.overrides).items()),
            str(spec.prior),
        ]
        for operator in spec.operators:
            parts += [operator.name, sorted(map(str, dict(operator.params).items()))]
        parts += [
            spec.settings.particles,
            spec.seed,
            spec.settings.features,
            spec.settings.repulsion,
            spec.settings.pruning,
            spec.settings.steering,
            spec.settings.smc,
        ]
        digest = hashlib.sha256(repr(parts).encode())
        digest.update(spec.y.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    # -- the end ---------------------------------------------------------------------------------
    def _finish(self, driver: DriverState, seconds: float) -> list[EnsembleResult]:
        backend = self._backend()
        samples = torch.cat(backend.call("samples"))
        losses = torch.cat(backend.call("losses"))
        statuses = torch.cat(backend.call("statuses"))
        calls = backend.call("nfe")
        final_weights = None
        if self.weighted:  # the last move's increments are not added yet
            increments = torch.cat(backend.call("log_weights"))
            final_weights = _zeros_if_none(driver.log_weights, self.spec.rows) + increments
        steps = max(len(driver.traces[0]["alive"]), 1)
        stats = {
            **self.stats,
            "coordination_seconds": self.stats["loop_seconds"] - self.stats["compute_seconds"],
            "bytes_per_step": self.stats["bytes"] / steps,
            "network_calls": float(sum(calls)),
            "restarts": float(self.restarts),
        }
        results = []
        for p, block in enumerate(self._blocks()):
            loss, status = losses[block], statuses[block]
            if self.settings.pruning.diagnostics:
                _add_rank_correlations(driver.traces[p], loss)
            weights = None if final_weights is None else _normalised(final_weights[block])
            selected = self._selected(p, loss, status, weights)
            results.append(
                EnsembleResult(
                    samples=samples[block][selected],
                    all_samples=samples[block],
                    loss=loss,
                    status=[STATUS_NAMES[int(s)] for s in status],
                    selected=selected,
                    origin=(driver.origin[block] - block.start).tolist(),
                    nfe=driver.nfe + int(max(calls)),
                    nfe_spent=driver.nfe + int(max(calls)) + self.nfe_lost,
                    seconds=seconds,
                    traces=driver.traces[p],
                    stats=dict(stats),
                    log_weights=weights,
                )
            )
        return results

    def _selected(
        self, problem: int, loss: torch.Tensor, status: torch.Tensor, weights: torch.Tensor | None
    ) -> list[int]:
        """One problem's returned particles: all running ones, the best by loss, the heaviest
        by final weight, or all resampled by their final weights (systematic, one uniform from
        the problem's seed)."""
        ok = [i for i in range(len(status)) if int(status[i]) == STATUS_OK]
        candidates = ok or list(range(len(status)))
        selection = self.settings.selection
        if selection == "best":
            order = sorted(candidates, key=lambda i: float(loss[i]))
            return order[: self.settings.select_k]
        usable = weights is not None and bool(torch.isfinite(weights).any())
        if selection == "heaviest" and usable:
            assert weights is not None
            order = sorted(candidates, key=lambda i: -float(weights[i]))
            return order[: self.settings.select_k]
        if selection == "weighted" and usable:
            assert weights is not None
            seed = self.spec.seeds[problem] ^ _SELECTION_SALT
            return systematic_resample(weights, _uniform(seed, self.num_steps)).tolist()
        return candidates

    def _backend(self) -> LocalBackend | RayBackend:
        assert self.backend is not None, "the ensemble is not running"
        return self.backend


def _add_rank_correlations(traces: dict[str, list[Any]], final_loss: torch.Tensor) -> None:
    """Per step, the Spearman rank correlation between the particles' losses then (of the
    current estimate, and of the denoised lookahead estimate) and their final loss. Slots are
    compared, so the figures describe runs without copies (no pruning or resampling)."""
    for kind in ("estimate", "lookahead"):
        key = "particle_loss" if kind == "estimate" else "particle_lookahead_loss"
        traces[f"rank_corr_{kind}"] = [spearman(then, final_loss.tolist()) for then in traces[key]]


def _uniform(seed: int, k: int) -> float:
    """The one uniform of a systematic resampling of a problem seeded ``seed`` at step k."""
    generator = torch.Generator().manual_seed(particle_seed(seed ^ _SMC_SALT, k))
    return float(torch.rand((), generator=generator, dtype=torch.float64))


def _normalised(log_weights: torch.Tensor) -> torch.Tensor:
    """log-weights shifted so that their log-sum-exp is 0 (all -inf stays all -inf)."""
    if not bool(torch.isfinite(log_weights).any()):
        return log_weights.clone()
    return log_weights - torch.logsumexp(log_weights, 0)


def _cat_or_none(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    """The groups' per-row values joined, or None when the solver reports none."""
    return None if parts[0] is None else torch.cat([p for p in parts if p is not None])


def _zeros_if_none(values: torch.Tensor | None, rows: int) -> torch.Tensor:
    return torch.zeros(rows, dtype=torch.float64) if values is None else values


def _ess_or_none(log_weights: torch.Tensor | None) -> float | None:
    """ESS of one problem's weights (None without weights; 0 when none is finite)."""
    if log_weights is None:
        return None
    if not bool(torch.isfinite(log_weights).any()):
        return 0.0
    return effective_sample_size(log_weights)


def _progress(spec: EnsembleSpec, total: int, initial: int) -> Any:
    """A progress bar over steps (particles alive, best measurement loss as postfix)."""
    from tqdm.auto import tqdm

    problems = f"{spec.problems} problems x " if spec.problems > 1 else ""
    label = f"{spec.solver.name} {problems}x{spec.settings.particles} ({spec.settings.backend})"
    return tqdm(
        total=total, initial=initial, desc=label, disable=not spec.settings.progress, leave=False
    )


def run(spec: EnsembleSpec, resume: bool = False) -> EnsembleResult:
    """Run an ensemble from its spec (``resume`` continues from the settings' checkpoint_dir).

    Backends, repulsion, pruning, SMC and selection: docs/ensemble.md.

    Example (CPU, under a second): 4 DPS particles on a 2-D Gaussian-mixture prior in this
    process, the best by measurement loss returned.

        >>> import torch, ensemble, operators, solvers
        >>> from ensemble import EnsembleSettings, EnsembleSpec, OperatorSpec
        >>> op = operators.build("matrix", A=torch.tensor([[1.0, 0.0]]), sigma=0.1)
        >>> y = op.measure(torch.tensor([[8.0, 0.0]]), torch.Generator().manual_seed(0))
        >>> spec = EnsembleSpec(
        ...     solver=solvers.SolverSpec("dps", "gmm", {"num_steps": 20}),
        ...     prior={"name": "gmm", "d": 2},
        ...     operator=OperatorSpec.of(op),
        ...     y=y,
        ...     settings=EnsembleSettings(particles=4, selection="best", progress=False),
        ... )
        >>> result = ensemble.run(spec)
        >>> tuple(result.samples.shape), tuple(result.all_samples.shape), result.status
        ((1, 2), (4, 2), ['ok', 'ok', 'ok', 'ok'])
        >>> bool(result.loss[result.selected[0]] == result.loss.min())
        True
    """
    return Ensemble(spec).run(resume=resume)


def run_all(spec: EnsembleSpec, resume: bool = False) -> list[EnsembleResult]:
    """Run every problem of a (possibly multi-problem) spec in one batch: one result each."""
    return Ensemble(spec).run_all(resume=resume)
