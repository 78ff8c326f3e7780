"""Where particle groups live: in the driver process (``local``) or in Ray actors (``ray``).

Both backends expose ``call(method, args)``: the same method on every group with per-group
arguments, returning the per-group results in group order (one barrier). A Ray actor that dies
raises ``WorkerLostError``; ``respawn`` replaces dead actors with fresh, unstarted ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ensemble.group import ParticleGroup, worker_key
from ensemble.ray_runtime import ensure_ray
from ensemble.spec import EnsembleSpec

# Idle Ray actors by worker key: a later run with the same prior reuses them instead of starting
# processes and loading the prior again (release_workers() ends them).
_IDLE: dict[str, list[Any]] = {}


class WorkerLostError(RuntimeError):
    """A worker process died during a call; the run rolls back to its last checkpoint."""


def slot_partition(sizes: Sequence[int]) -> list[list[int]]:
    """Contiguous global slot numbers per group."""
    out, start = [], 0
    for size in sizes:
        out.append(list(range(start, start + size)))
        start += size
    return out


class LocalBackend:
    """Groups held by the driver itself (one group by default: all particles in one batch)."""

    def __init__(self, spec: EnsembleSpec) -> None:
        self.partition = slot_partition(spec.sizes())
        self.groups = [ParticleGroup(spec, slots) for slots in self.partition]

    def call(self, method: str, args: Sequence[tuple[Any, ...]] | None = None) -> list[Any]:
        args = args if args is not None else [()] * len(self.groups)
        return [getattr(g, method)(*a) for g, a in zip(self.groups, args, strict=True)]

    def respawn(self) -> list[int]:
        return []

    def shutdown(self) -> None:
        self.groups = []


class RayBackend:
    """One Ray actor per group, placed with ``cpus_per_worker`` / ``gpus_per_worker``."""

    def __init__(self, spec: EnsembleSpec) -> None:
        import ray

        ensure_ray(spec.settings.address)
        self.ray = ray
        self.spec = spec
        self.partition = slot_partition(spec.sizes())
        self.spec_ref = ray.put(spec)
        self.actor_class = ray.remote(ParticleGroup)
        self.key = worker_key(spec) + ray.get_runtime_context().get_job_id()
        idle = _IDLE.setdefault(self.key, [])
        self.handles = [
            self._reuse(idle.pop(), slots) if idle else self._spawn(slots)
            for slots in self.partition
        ]

    def _reuse(self, handle: Any, slots: list[int]) -> Any:
        try:
            self.ray.get(handle.reset.remote(self.spec_ref, slots))
            return handle
        except self.ray.exceptions.RayActorError:
            return self._spawn(slots)

    def _spawn(self, slots: list[int]) -> Any:
        threads = max(int(self.spec.settings.cpus_per_worker), 1)
        options = {
            "num_cpus": self.spec.settings.cpus_per_worker,
            "num_gpus": self.spec.settings.gpus_per_worker,
            "max_restarts": 0,
        }
        return self.actor_class.options(**options).remote(self.spec_ref, slots, threads)

    def call(self, method: str, args: Sequence[tuple[Any, ...]] | None = None) -> list[Any]:
        args = args if args is not None else [()] * len(self.handles)
        refs = [getattr(h, method).remote(*a) for h, a in zip(self.handles, args, strict=True)]
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayActorError as err:
            raise WorkerLostError(f"a worker died during {method}: {err}") from err

    def respawn(self) -> list[int]:
        """Replace dead actors by fresh ones; returns the replaced group numbers."""
        replaced = []
        for number, handle in enumerate(self.handles):
            try:
                self.ray.get(handle.nfe.remote())
            except self.ray.exceptions.RayActorError:
                self.handles[number] = self._spawn(self.partition[number])
                replaced.append(number)
        return replaced

    def shutdown(self) -> None:
        """Park the workers for the next run with the same prior."""
        _IDLE.setdefault(self.key, []).extend(self.handles)
        self.handles = []


def release_workers() -> int:
    """End every idle Ray worker kept for reuse; returns how many were ended."""
    if not _IDLE:
        return 0
    import ray

    count = 0
    for handles in _IDLE.values():
        for handle in handles:
            if ray.is_initialized():
                ray.kill(handle)
            count += 1
    _IDLE.clear()
    return count


def make_backend(spec: EnsembleSpec) -> LocalBackend | RayBackend:
    return RayBackend(spec) if spec.settings.backend == "ray" else LocalBackend(spec)
