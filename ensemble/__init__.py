"""Particle ensembles on Ray actors: repulsion, pruning, selection (docs/ensemble.md).

``ensemble.run(spec) -> EnsembleResult`` runs N particles of one solver, batched in the driver
(``backend="local"``) or spread over Ray actors (``backend="ray"``), with repulsion in feature
space, top-k pruning, loss-potential steering or a weighted solver's SMC resampling between
steps, checkpoints and recovery from dead
workers. Ray workers are kept for the next run with the same prior; ``release_workers()`` ends
them. ``JobPool`` runs a queue of specs (jobs) concurrently on long-lived Ray actors over the
whole cluster. ``import ensemble`` does not import ray.
"""

from ensemble.backends import release_workers
from ensemble.pool import JobOutcome, JobPool
from ensemble.run import Ensemble, EnsembleResult, run, run_all
from ensemble.settings import (
    SMC,
    EnsembleSettings,
    EnsembleSpecError,
    Pruning,
    Repulsion,
    Steering,
)
from ensemble.spec import EnsembleSpec, OperatorSpec

__all__ = [
    "SMC",
    "Ensemble",
    "EnsembleResult",
    "EnsembleSettings",
    "EnsembleSpec",
    "EnsembleSpecError",
    "JobOutcome",
    "JobPool",
    "OperatorSpec",
    "Pruning",
    "Repulsion",
    "Steering",
    "release_workers",
    "run",
    "run_all",
]
