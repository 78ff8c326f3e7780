"""Where particle groups live: in the driver process (``local``) or in Ray actors (``ray``).

Both backends expose ``call(method, args)``: the same method on every group with per-group
arguments, returning the per-group results in group order (one barrier). A Ray actor that dies
raises ``WorkerLostError``; ``respawn`` replaces dead actors with fresh, unstarted ones. An
actor that cannot build its group (prior, operator, solver) raises ``WorkerStartError`` instead,
and an exception raised by a group's method is re-raised as itself: both would repeat on a
fresh actor. Ray's terminal colour codes never reach the messages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ensemble.group import ParticleGroup, worker_key
from ensemble.ray_runtime import ensure_ray
from ensemble.spec import EnsembleSpec

# Idle Ray actors by worker key: a later run with the same prior reuses them instead of starting
# processes and loading the prior again (release_workers() ends them).
_IDLE: dict[str, list[Any]] = {}


_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class WorkerLostError(RuntimeError):
    """A worker process died during a call; the run rolls back to its last checkpoint."""


class WorkerStartError(RuntimeError):
    """A Ray worker raised while building its particle group (loading the prior, building the
    operator or the solver): not a lost worker, since a fresh one would raise the same."""


def strip_terminal_codes(text: str) -> str:
    """``text`` without ANSI terminal codes (Ray colours the tracebacks it forwards)."""
    return _TERMINAL_CODES.sub("", text)


def raised_in_worker(message: str) -> str:
    """The exception line(s) closing a traceback Ray forwards as text (``Type: message``), for
    an actor whose ``__init__`` raised: Ray keeps only the formatted traceback."""
    lines = [line for line in strip_terminal_codes(message).splitlines() if line.strip()]
    frames = [i for i, line in enumerate(lines) if line.lstrip().startswith('File "')]
    tail = lines[frames[-1] + 1 :] if frames else lines[-1:]
    while len(tail) > 1 and tail[0].startswith((" ", "\t")):  # the frame's source, ^^^ marks
        tail.pop(0)
    return " ".join(line.strip() for line in tail)


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
            if getattr(err, "_actor_init_failed", False):  # Ray's flag: its __init__ raised
                raise WorkerStartError(
                    f"a Ray worker could not start: {raised_in_worker(str(err))}"
                ) from err
            raise WorkerLostError(
                f"a worker died during {method}: {strip_terminal_codes(str(err))}"
            ) from err
        except self.ray.exceptions.RayTaskError as err:  # the method raised: the same again
            raise err.cause from err

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
