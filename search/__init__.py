"""Hyperparameter search with Ray Tune + Optuna + ASHA, generic over an objective and a space.

The package knows nothing of images or solvers (docs/search.md): it receives

- a space: ``Float``, ``Int``, ``Categorical``, ``Fixed`` dimensions, usually built from
  declared ranges with ``space_from_ranges(ranges, fix=..., narrow=..., integers=...)``;
- an objective ``objective(config, report) -> dict | None`` that reports intermediate metrics
  (with a ``step``) and returns its final ones (search.objective);

and ``tune(objective, space, metric, mode, num_samples, name=..., storage_dir=...)`` runs the
study: Optuna's TPE (or GP, CMA-ES, random) through Ray Tune, ASHA early stopping, a concurrency
limit, per-trial resources with placement-group bundles for the trial's own actors, Optuna's
journal on disk under a unique study name, resume after an interruption, failed or NaN trials
recorded as failed, and an MLflow parent run with one child run per trial. ``save_best_yaml``
writes the best config as a preset; ``optuna_dashboard_command`` opens the storage.

Importing ``search`` stays light: ray, optuna, mlflow and pandas load when a study runs.
"""

from search.objective import FINAL_KEY, Objective, ObjectiveError, Report, Reporter
from search.space import (
    Categorical,
    DefineByRun,
    Dimension,
    Fixed,
    Float,
    Int,
    Space,
    SpaceError,
    space_from_ranges,
    validate_point,
)
from search.study import StudyResult, optuna_dashboard_command, save_best_yaml, tune

__all__ = [
    "FINAL_KEY",
    "Categorical",
    "DefineByRun",
    "Dimension",
    "Fixed",
    "Float",
    "Int",
    "Objective",
    "ObjectiveError",
    "Report",
    "Reporter",
    "Space",
    "SpaceError",
    "StudyResult",
    "optuna_dashboard_command",
    "save_best_yaml",
    "space_from_ranges",
    "tune",
    "validate_point",
]
