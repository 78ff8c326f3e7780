"""Hyperparameter studies of one method: ``dipswarm tune CONFIG [overrides]`` (docs/search.md).

``run_study`` runs (or resumes) the study of a tune config (experiments/tune_config.py) with
``search.tune``: its objective (experiments/objectives.py) per trial, progress lines while it
runs (experiments/study_progress.py), then ``trials.csv`` and the best config as a YAML preset
(experiments/best_preset.py) in the study folder, the preset also logged to the study's MLflow
run.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ensemble.ray_runtime import ensure_ray, verbose
from experiments.best_preset import write_preset
from experiments.config import ConfigError, check_tracking_server
from experiments.study_progress import StudyProgress
from experiments.tune_config import TuneConfig

if TYPE_CHECKING:
    import search

TRIALS_FILE = "trials.csv"


@dataclass
class StudyOutcome:
    """A finished (or interrupted) study and the files written after it."""

    config: TuneConfig
    result: search.StudyResult
    preset: Path | None
    trials: Path

    def summary(self) -> str:
        """What to tell the user: the best config, the files, and how to browse the study."""
        import search as search_pkg
        from experiments.tracking import Tracker

        result, config = self.result, self.config
        counts = result.trials["status"].value_counts().to_dict() if len(result.trials) else {}
        done = ", ".join(f"{counts[s]} {s}" for s in sorted(counts))
        lines = [
            f"study {result.study_name}: {len(result.trials)} of {config.search.num_samples} "
            f"trials ({done}); compute {result.total_steps} "
            f"{'instances' if config.gmm else 'images'}"
            + ("; INTERRUPTED (resume with --resume)" if result.interrupted else ""),
        ]
        if result.best_config is not None:
            lines.append(f"best {result.metric} = {result.best_value:.6g} (trial "
                         f"{result.best_trial_id}):")  # fmt: skip
            lines += [f"  {k}: {v!r}" for k, v in result.best_config.items()]
        else:
            lines.append("no completed trial: no best config")
        lines.append(f"trials:    {self.trials}")
        if self.preset is not None:
            run = f"dipswarm run {self.preset}" if config.experiment else "solvers.build(...)"
            lines.append(f"preset:    {self.preset}  (use: {run})")
        lines.append(f"report:    dipswarm report --study {result.experiment_path}")
        if result.mlflow_uri:
            tracker = Tracker(result.mlflow_uri, config.tracking.experiment, config.output)
            lines.append(f"mlflow:    {tracker.ui_command()}")
            if url := tracker.runs_url():
                lines.append(f"runs:      {url}")
        lines.append(f"optuna:    {search_pkg.optuna_dashboard_command(result)}")
        return "\n".join(lines)


def run_study(
    config: TuneConfig,
    progress: bool = True,
    stream: TextIO | None = None,
    objective: search.Objective | None = None,
) -> StudyOutcome:
    """Run (or resume) the study, then write ``trials.csv`` and the best preset into its
    folder and log the preset to the study's MLflow run. ``objective`` replaces the config's
    own (benchmarks wrap it); progress lines go to ``stream`` (default stdout)."""
    import search as search_pkg

    uri = _tracking_uri(config)  # before Ray starts: an unreachable server fails at once
    ensure_ray(
        config.experiment.method_ensemble(config.method).address if config.experiment else None
    )
    watcher = (
        StudyProgress(config.study_dir, config.search.metric, config.search.mode,
                      config.search.num_samples, stream=stream)
        if progress else nullcontext()
    )  # fmt: skip
    with watcher:
        try:
            result = search_pkg.tune(
                objective or config.objective(),
                config.space,
                config.search.metric,
                config.search.mode,
                config.search.num_samples,
                name=config.name,
                storage_dir=config.storage_dir,
                sampler=config.search.sampler,
                seed=config.search.seed,
                asha=config.asha(),
                max_concurrent=config.search.max_concurrent,
                resources=config.resources(),
                points_to_evaluate=config.points(),
                mlflow_uri=uri,
                mlflow_experiment=config.tracking.experiment,
                resume=config.search.resume,
                verbose=1 if verbose() else 0,
            )
        except FileExistsError as err:
            raise ConfigError(
                f"{err} (command line: --resume, or search.name=ANOTHER_NAME)"
            ) from None
    trials = result.experiment_path / TRIALS_FILE
    result.trials.to_csv(trials, index=False)
    preset = write_preset(config, result) if result.best_config is not None else None
    if preset is not None and result.mlflow_parent_run_id:
        from search.tracking import client

        client(result.mlflow_uri).log_artifact(result.mlflow_parent_run_id, str(preset))
    return StudyOutcome(config, result, preset, trials)


def _tracking_uri(config: TuneConfig) -> str | None:
    """The study's MLflow store (absolute; a new SQLite store is seeded from the cached empty
    one, which saves MLflow's migrations), or None when tracking is off."""
    if not config.tracking.enabled:
        return None
    from experiments.tracking import SQLITE_PREFIX, _seed_sqlite, resolve_tracking_uri

    uri = resolve_tracking_uri(config.tracking.uri, config.output)
    check_tracking_server(uri)
    if uri.startswith(SQLITE_PREFIX):
        database = Path(uri[len(SQLITE_PREFIX) :].partition("?")[0])
        if not database.exists():
            database.parent.mkdir(parents=True, exist_ok=True)
            _seed_sqlite(database, config.storage_dir / "mlartifacts")
    return uri
