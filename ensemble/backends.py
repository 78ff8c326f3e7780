"""Where particle groups live: in the driver process (``local``) or in Ray actors (``ray``).

Both backends expose ``call(method, args)``: the same method on every group with per-group
arguments, returning the per-group results in group order (one barrier). A Ray actor that dies
raises ``WorkerLostError``; ``respawn`` replaces dead actors with fresh, unstarted ones.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ensemble.group import ParticleGroup
from ensemble.spec import EnsembleSpec


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

        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(address=spec.address, include_dashboard=False, log_to_driver=False)
        self.ray = ray
        self.spec = spec
        self.partition = slot_partition(spec.sizes())
        self.spec_ref = ray.put(spec)
        self.actor_class = ray.remote(ParticleGroup)
        self.handles = [self._spawn(slots) for slots in self.partition]

    def _spawn(self, slots: list[int]) -> Any:
        threads = max(int(self.spec.cpus_per_worker), 1)
        options = {
            "num_cpus": self.spec.cpus_per_worker,
            "num_gpus": self.spec.gpus_per_worker,
            "max_restarts": 0,
        }
        return self.actor_class.options(**options).remote(self.spec_ref, slots, threads)

    def call(self, method: str, args: Sequence[tuple[Any, ...]] | None = None) -> list[Any]:
        args = args if args is not None else [()] * len(self.handles)
        refs = [getattr(h, method).remote(*a) for h, a in zip(self.handles, args, strict=True)]
        try:
            return self.ray.get(refs)
        except (self.ray.exceptions.RayActorError, self.ray.exceptions.ActorDiedError) as err:
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
        for handle in self.handles:
            self.ray.kill(handle)
        self.handles = []


def make_backend(spec: EnsembleSpec) -> LocalBackend | RayBackend:
    return RayBackend(spec) if spec.backend == "ray" else LocalBackend(spec)
