"""A pool of long-lived Ray actors running a queue of ensemble jobs over the whole cluster
(docs/ensemble.md, "Job pool"; docs/cluster.md).

A job is one ``EnsembleSpec``, usually a batch of several problems. A job with one worker runs
entirely inside a pool actor, which keeps its prior (and feature map) loaded for the next job
with the same prior, so the driver only submits, waits and hands results back. A job whose
particles need several workers runs as a coordinating Ray task inside a placement group that
reserves every worker's bundle at once (its workers are the Ray backend's actors, placed in the
group), so two such jobs never each hold half of what they need.

As many jobs run at once as the cluster's resources fit (or ``max_concurrent_jobs``). A job whose
actor, worker or node dies is run again on a fresh actor, from its ensemble checkpoint when the
spec has a ``checkpoint_dir`` the new actor can read; a job lost ``max_attempts`` times, or one
that raises an exception (which would repeat), comes back with its error and the pool goes on.
Results do not depend on the order or the worker: the seeds live in the spec.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ensemble.backends import (
    LocalBackend,
    release_workers,
    slot_partition,
    strip_terminal_codes,
)
from ensemble.group import ParticleGroup, worker_key
from ensemble.ray_runtime import ensure_ray
from ensemble.run import Ensemble, EnsembleResult
from ensemble.spec import EnsembleSpec

_log = logging.getLogger("dipswarm.ensemble")


@dataclass(frozen=True)
class JobOutcome:
    """A finished job: one result per problem (in the spec's order), or its error.

    ``attempts``: how many times the job was started (2 after one lost worker); ``worker``: the
    pool actor's Ray name, or the placement group of a multi-worker job; ``node``: the Ray node
    id it finished on (empty when unknown).
    """

    key: Hashable
    results: list[EnsembleResult] | None
    error: str | None
    attempts: int
    worker: str
    node: str = ""


@dataclass(frozen=True)
class JobCounts:
    """Progress of a pool: jobs finished with results (``done``) or with an error (``failed``),
    in flight, and waiting; ``driver_seconds``: the driver thread's CPU time spent inside
    ``submit`` and ``results`` (scheduling overhead, not the jobs' compute)."""

    done: int
    running: int
    queued: int
    failed: int
    driver_seconds: float


class PoolWorker:
    """A pool actor: runs whole single-worker jobs with the local backend, on a particle group
    (prior, feature map) kept from the previous job with the same prior."""

    def __init__(self, threads: int) -> None:
        torch.set_num_threads(threads)
        self.group: ParticleGroup | None = None
        self.key: str | None = None

    def node(self) -> str:
        """The Ray node this actor lives on (called once, when it has started)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def run(self, spec: EnsembleSpec, resume: bool) -> list[EnsembleResult]:
        spec = spec.with_settings(backend="local", progress=False)
        return Ensemble(spec, backend=self._backend).run_all(resume=resume)

    def _backend(self, spec: EnsembleSpec) -> LocalBackend:
        if self.key != worker_key(spec):
            self.group = None  # free the previous prior before loading the next one
            self.group = ParticleGroup(spec, slot_partition(spec.sizes())[0])
            self.key = worker_key(spec)
        return _KeptBackend(spec, self.group)


class _KeptBackend(LocalBackend):
    """The local backend on a pool actor's kept group, reset for this run."""

    def __init__(self, spec: EnsembleSpec, group: ParticleGroup) -> None:
        self.partition = slot_partition(spec.sizes())
        group.reset(spec, self.partition[0])
        self.groups = [group]


def run_placed(spec: EnsembleSpec, resume: bool) -> tuple[str, list[EnsembleResult]]:
    """A multi-worker job, run as a Ray task in its placement group: the Ray backend's actors
    it starts are placed in the group; they end with the job. Returns (node id, results)."""
    import ray

    try:
        spec = spec.with_settings(backend="ray", progress=False)
        results = Ensemble(spec).run_all(resume=resume)
    finally:
        release_workers()
    return ray.get_runtime_context().get_node_id(), results


@dataclass
class _Job:
    key: Hashable
    spec: EnsembleSpec
    attempts: int = 0

    @property
    def single(self) -> bool:
        return self.spec.settings.workers == 1


@dataclass
class _Actor:
    handle: Any
    name: str
    node: str = ""


@dataclass
class _Running:
    job: _Job
    actor: _Actor | None  # the pool actor running a single-worker job
    group: Any = None  # the placement group of a multi-worker job
    worker: str = ""


class JobPool:
    """Runs ``EnsembleSpec`` jobs on long-lived Ray actors, as many at once as fit.

    ``max_concurrent_jobs`` None: the cluster's GPUs / ``gpus_per_job`` when that is > 0, else
    its CPUs / ``cpus_per_job`` (at least 1). Pool actors take ``cpus_per_job`` CPUs (and as many
    torch threads) and ``gpus_per_job`` GPUs. ``submit`` queues a job under a key;
    ``results()`` yields a ``JobOutcome`` per job in completion order until every submitted job
    is done. Connects with ``ensure_ray(address)``. Use as a context manager (or ``close()``).
    """

    def __init__(
        self,
        max_concurrent_jobs: int | None = None,
        cpus_per_job: float = 1.0,
        gpus_per_job: float = 0.0,
        address: str | None = None,
        max_attempts: int = 2,
    ) -> None:
        for name, value in (("cpus_per_job", cpus_per_job), ("gpus_per_job", gpus_per_job)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        for name, count in (
            ("max_attempts", max_attempts),
            ("max_concurrent_jobs", max_concurrent_jobs),
        ):
            if count is not None and (
                isinstance(count, bool) or not isinstance(count, int) or count < 1
            ):
                raise ValueError(f"{name} must be an integer >= 1, got {count!r}")
        import ray

        ensure_ray(address)
        self._ray = ray
        if max_concurrent_jobs is None:
            max_concurrent_jobs = self._fit(ray.cluster_resources(), cpus_per_job, gpus_per_job)
        self.max_concurrent_jobs = max_concurrent_jobs
        self.max_attempts = max_attempts
        self._threads = max(1, int(cpus_per_job))
        self._actor_class = ray.remote(PoolWorker)
        self._actor_options = {
            "num_cpus": cpus_per_job,
            "num_gpus": gpus_per_job,
            "max_restarts": 0,
            "max_task_retries": 0,
        }
        self._placed = ray.remote(run_placed)
        self._name = f"dipswarm-pool-{uuid.uuid4().hex[:8]}"
        self._numbers = itertools.count()
        self._queue: collections.deque[_Job] = collections.deque()
        self._queued_single = 0
        self._keys: set[Hashable] = set()
        self._inflight: dict[Any, _Running] = {}
        self._starting: dict[Any, _Actor] = {}
        self._idle: list[_Actor] = []
        self._done = self._failed = 0
        self._driver_seconds = 0.0

    @staticmethod
    def _fit(total: dict[str, float], cpus: float, gpus: float) -> int:
        if gpus > 0:
            return max(1, int(total.get("GPU", 0.0) / gpus + 1e-9))
        if cpus > 0:
            return max(1, int(total.get("CPU", 0.0) / cpus + 1e-9))
        raise ValueError(
            "cpus_per_job and gpus_per_job are both 0: give max_concurrent_jobs, since the "
            "cluster's resources cannot say how many jobs fit"
        )

    # -- the public interface --------------------------------------------------------------------
    def submit(self, key: Hashable, spec: EnsembleSpec) -> None:
        """Queue a job; it starts as soon as a worker (or its placement group) is free."""
        began = time.thread_time()
        if not isinstance(spec, EnsembleSpec):
            raise TypeError(f"a job is an ensemble.EnsembleSpec, got {type(spec).__name__}")
        if key in self._keys:
            raise ValueError(f"job {key!r} is already in the pool; keys must be unique")
        if spec.settings.workers > 1:
            self._check_fits(spec)
        self._keys.add(key)
        self._enqueue(_Job(key, spec))
        self._dispatch()
        self._driver_seconds += time.thread_time() - began

    def results(self) -> Iterator[JobOutcome]:
        """Finished jobs in completion order, until every submitted job is done (jobs
        submitted while iterating included)."""
        while self._queue or self._inflight:
            began = time.thread_time()
            self._dispatch()
            waiting = [*self._inflight, *self._starting]
            if not waiting:
                raise RuntimeError("the job pool has queued jobs but no worker to run them")
            ready, _ = self._ray.wait(waiting, num_returns=1)
            ref = ready[0]
            outcome = self._finished(ref) if ref in self._inflight else self._started(ref)
            self._dispatch()
            self._driver_seconds += time.thread_time() - began
            if outcome is not None:
                yield outcome

    def counts(self) -> JobCounts:
        """Jobs done, running, queued and failed, and the driver's scheduling CPU time."""
        return JobCounts(
            self._done, len(self._inflight), len(self._queue), self._failed, self._driver_seconds
        )

    def running(self) -> dict[Hashable, tuple[str, str]]:
        """The jobs in flight: key -> (worker, node id). Workers are pool actors' Ray names (for
        ``ray.get_actor``); the node is empty for multi-worker jobs. Safe to call from another
        thread while ``results()`` runs."""
        return {
            r.job.key: (r.worker, r.actor.node if r.actor else "")
            for r in tuple(self._inflight.values())
        }

    def close(self) -> None:
        """End every pool actor and placement group; queued and running jobs are dropped."""
        for running in self._inflight.values():
            if running.actor is not None:
                self._kill(running.actor)
            if running.group is not None:
                _remove_group(running.group)
        for actor in [*self._idle, *self._starting.values()]:
            self._kill(actor)
        self._inflight.clear()
        self._starting.clear()
        self._idle.clear()
        self._queue.clear()
        self._queued_single = 0
        self._keys.clear()

    def __enter__(self) -> JobPool:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- scheduling ------------------------------------------------------------------------------
    def _enqueue(self, job: _Job, front: bool = False) -> None:
        if front:
            self._queue.appendleft(job)
        else:
            self._queue.append(job)
        self._queued_single += job.single

    def _dispatch(self) -> None:
        """Start queued jobs on idle actors (multi-worker jobs in placement groups), and start
        the actors the queue needs."""
        while self._queue and len(self._inflight) < self.max_concurrent_jobs:
            job = self._queue[0]
            if job.single and not self._idle:
                break
            self._queue.popleft()
            self._queued_single -= job.single
            if job.single:
                self._start_on(self._idle.pop(), job)
            else:
                self._start_placed(job)
        free = self.max_concurrent_jobs - len(self._inflight)
        busy = sum(1 for r in self._inflight.values() if r.actor is not None)
        room = self.max_concurrent_jobs - busy - len(self._idle) - len(self._starting)
        for _ in range(min(min(self._queued_single, free) - len(self._starting), room)):
            self._spawn()
        placed = any(r.group is not None for r in self._inflight.values())
        if self._idle and not self._queued_single and (placed or self._queue):
            for actor in self._idle:  # their resources go to the placement groups
                self._kill(actor)
            self._idle.clear()

    def _spawn(self) -> None:
        name = f"{self._name}-{next(self._numbers)}"
        handle = self._actor_class.options(name=name, **self._actor_options).remote(self._threads)
        self._starting[handle.node.remote()] = _Actor(handle, name)

    def _start_on(self, actor: _Actor, job: _Job) -> None:
        job.attempts += 1
        ref = actor.handle.run.remote(job.spec, self._resume(job))
        self._inflight[ref] = _Running(job, actor, worker=actor.name)

    def _start_placed(self, job: _Job) -> None:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        job.attempts += 1
        bundle = self._bundle(job.spec)
        group = placement_group([dict(bundle) for _ in range(job.spec.settings.workers)])
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
        ref = self._placed.options(num_cpus=0, max_retries=0, scheduling_strategy=strategy).remote(
            job.spec, self._resume(job)
        )
        self._inflight[ref] = _Running(job, None, group, f"placement group {group.id.hex()[:8]}")

    @staticmethod
    def _bundle(spec: EnsembleSpec) -> dict[str, float]:
        """One worker's reservation; a worker that asks for nothing still holds a sliver of CPU
        (Ray refuses empty bundles)."""
        settings = spec.settings
        bundle = {"CPU": settings.cpus_per_worker, "GPU": settings.gpus_per_worker}
        return {k: v for k, v in bundle.items() if v > 0} or {"CPU": 0.001}

    def _check_fits(self, spec: EnsembleSpec) -> None:
        """A multi-worker job whose placement group exceeds the cluster would wait forever."""
        total = self._ray.cluster_resources()
        workers = spec.settings.workers
        for resource, amount in self._bundle(spec).items():
            if amount * workers > total.get(resource, 0.0) + 1e-9:
                raise ValueError(
                    f"a job with {workers} workers needs {amount * workers:g} {resource} at once "
                    f"(a placement group of {workers} bundles), but the cluster has "
                    f"{total.get(resource, 0.0):g}; lower ensemble.workers or "
                    f"cpus_per_worker/gpus_per_worker, or add nodes"
                )

    @staticmethod
    def _resume(job: _Job) -> bool:
        """A job run again continues from its checkpoint when it has one."""
        return job.attempts > 1 and job.spec.settings.checkpoint_dir is not None

    # -- completions -----------------------------------------------------------------------------
    def _started(self, ref: Any) -> None:
        actor = self._starting.pop(ref)
        try:
            actor.node = self._ray.get(ref)
        except self._ray.exceptions.RayError:
            self._kill(actor)  # it never came up (its node went away): _dispatch starts another
            return None
        self._idle.append(actor)
        return None

    def _finished(self, ref: Any) -> JobOutcome | None:
        running = self._inflight.pop(ref)
        job, actor = running.job, running.actor
        if running.group is not None:
            _remove_group(running.group)
        try:
            value = self._ray.get(ref)
        except self._ray.exceptions.RayError as err:
            if self._raised(err):  # the job's own exception: running it again would repeat it
                if actor is not None:
                    self._idle.append(actor)
                return self._outcome(running, None, _message(err), actor.node if actor else "")
            if actor is not None:
                self._kill(actor)
            if job.attempts < self.max_attempts:
                _log.warning(
                    f"dipswarm: job {job.key!r} lost its worker ({running.worker}); running it "
                    f"again (attempt {job.attempts + 1} of {self.max_attempts})"
                )
                self._enqueue(job, front=True)
                return None
            error = f"lost its worker {job.attempts} times; last: {_message(err)}"
            return self._outcome(running, None, error, actor.node if actor else "")
        if actor is not None:
            self._idle.append(actor)
            return self._outcome(running, value, None, actor.node)
        node, results = value
        return self._outcome(running, results, None, node)

    def _raised(self, err: Exception) -> bool:
        exceptions = self._ray.exceptions
        cause = getattr(err, "cause", None)
        return isinstance(err, exceptions.RayTaskError) and not isinstance(
            cause, exceptions.RayError
        )

    def _outcome(
        self, running: _Running, results: list[EnsembleResult] | None, error: str | None, node: str
    ) -> JobOutcome:
        job = running.job
        self._keys.discard(job.key)
        if error is None:
            self._done += 1
        else:
            self._failed += 1
        return JobOutcome(job.key, results, error, job.attempts, running.worker, node)

    def _kill(self, actor: _Actor) -> None:
        with contextlib.suppress(self._ray.exceptions.RayError):  # already gone
            self._ray.kill(actor.handle)


def _remove_group(group: Any) -> None:
    from ray.util.placement_group import remove_placement_group

    remove_placement_group(group)


def _message(err: Exception) -> str:
    """The job's error as plain text: the original exception's type and message where Ray
    wrapped one, without terminal colour codes."""
    cause = getattr(err, "cause", None)
    if cause is not None:
        text = f"{type(cause).__name__}: {cause}"
    else:
        lines = [line for line in str(err).splitlines() if line.strip()]
        text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    return strip_terminal_codes(text).strip()
