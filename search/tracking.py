"""MLflow records of a study: one parent run per study, one child run per trial.

Everything is written from the driver (a single writer: SQLite stores break under concurrent
writers) through ``MlflowClient``, never the fluent API, so that no global active run
is touched. Child runs carry the ``mlflow.parentRunId`` tag (what nests them in the UI), the
trial's params, its metrics per step (one ``log_batch`` per report) and a ``search.status`` tag.
mlflow is imported lazily.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Mapping
from numbers import Real
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

PARENT_TAG = "mlflow.parentRunId"  # what nests a child run under its parent in the MLflow UI
STATUS_TAG = "search.status"
TRIAL_TAG = "search.trial_id"
# MLflow 3's UI opens an experiment on its kind's page: GenAI experiments (and unmarked ones
# without runs yet) on the traces "Overview", custom model development ones on their runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
RUNS_KIND = "custom_model_development"
# Limits of MLflow 3.17 (mlflow.utils.validation); tests/test_tracking.py checks they still hold.
PARAM_VALUE_LIMIT = 6000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
SQLITE_PREFIX = "sqlite:///"
# Characters MLflow accepts in param and metric names (POSIX); others become "_".
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")
# Result keys that Tune adds to every report: bookkeeping, not the objective's metrics.
TUNE_KEYS = frozenset(
    {
        "training_iteration", "time_this_iter_s", "timestamp", "date", "time_since_restore",
        "iterations_since_restore", "timesteps_since_restore", "timesteps_total",
        "episodes_total", "node_ip", "hostname", "pid", "config", "checkpoint_dir_name",
        "done", "trial_id", "experiment_tag", "should_checkpoint",
    }
)  # fmt: skip


def absolute_uri(uri: str | Path) -> str:
    """``uri`` made independent of the working directory (Tune changes it per trial).

    A relative ``sqlite:///file.db`` or a plain ``*.db`` path becomes an absolute SQLite URI;
    other URIs (``sqlite:////abs.db``, ``http://...``) are returned unchanged.
    """
    text = str(uri)
    if text.startswith(SQLITE_PREFIX):
        return absolute_sqlite(text)
    if ":" not in text:
        return f"{SQLITE_PREFIX}{Path(text).expanduser().resolve()}"
    return text


def absolute_sqlite(uri: str) -> str:
    """``sqlite:///rel.db`` -> ``sqlite:////abs/rel.db``; in-memory and other URIs unchanged."""
    rest = uri[len(SQLITE_PREFIX) :] if uri.startswith(SQLITE_PREFIX) else ""
    path, mark, query = rest.partition("?")
    if not path or path == ":memory:":
        return uri
    return f"{SQLITE_PREFIX}{Path(path).expanduser().resolve()}{mark}{query}"


def client(uri: str) -> Any:
    """An ``MlflowClient`` on ``uri``."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def open_parent(
    uri: str, experiment: str, study_name: str, params: Mapping[str, Any], artifact_dir: Path
) -> tuple[str, str]:
    """Create the study's parent run (and the experiment if new); its (experiment, run) ids."""
    mlflow_client = client(uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is not None:
        experiment_id = found.experiment_id
        mark_runs_kind(mlflow_client, found)
    else:
        experiment_id = mlflow_client.create_experiment(
            experiment,
            artifact_location=Path(artifact_dir).resolve().as_uri(),
            tags={EXPERIMENT_KIND_TAG: RUNS_KIND},
        )
    run = mlflow_client.create_run(
        experiment_id, run_name=study_name, tags={"search.study": study_name}
    )
    log_params(mlflow_client, run.info.run_id, params)
    return experiment_id, run.info.run_id


def mark_runs_kind(mlflow_client: Any, experiment: Any) -> None:
    """Tag an existing experiment (an MLflow ``Experiment``) as one of runs, so that the UI
    opens it on its runs page; a kind already set (by the user) is kept."""
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        mlflow_client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, RUNS_KIND)


def reopen_parent(uri: str, run_id: str, outcomes: Mapping[str, str]) -> None:
    """Mark a resumed study's parent run as running again. Children that a killed driver left
    RUNNING (it could not end them) end as their trial's Optuna record says (``outcomes``:
    trial id -> completed | stopped | failed), KILLED if it is unfinished (as ``close_parent``
    ends an interrupted study's)."""
    mlflow_client = client(uri)
    for child in _children(mlflow_client, run_id, "RUNNING"):
        outcome = outcomes.get(child.data.tags.get(TRIAL_TAG, ""))
        if outcome is None:
            mlflow_client.set_terminated(child.info.run_id, "KILLED")
        else:
            end_child(mlflow_client, child.info.run_id, outcome)
    mlflow_client.update_run(run_id, status="RUNNING")


def close_parent(
    uri: str,
    run_id: str,
    metric: str,
    best_value: float | None,
    best_config: Mapping[str, Any] | None,
    finished: bool,
) -> None:
    """End the parent run: best value as a metric, best config as an artifact; open children
    (trials cut off by an interruption) end KILLED, and so does the parent if unfinished."""
    mlflow_client = client(uri)
    if best_value is not None:
        mlflow_client.log_metric(run_id, f"best_{metric}", best_value)
    if best_config is not None:
        mlflow_client.log_dict(run_id, dict(best_config), "best_config.yaml")
    for child in open_children(mlflow_client, run_id):
        mlflow_client.set_terminated(child, "KILLED")
    mlflow_client.set_terminated(run_id, "FINISHED" if finished else "KILLED")


def open_children(mlflow_client: Any, parent_id: str) -> list[str]:
    """Run ids of the parent's children that are still RUNNING."""
    return [run.info.run_id for run in _children(mlflow_client, parent_id, "RUNNING")]


def ended_trials(mlflow_client: Any, parent_id: str) -> set[str]:
    """Trial ids of the parent's children that ended FINISHED or FAILED (not KILLED)."""
    runs = [
        *_children(mlflow_client, parent_id, "FINISHED"),
        *_children(mlflow_client, parent_id, "FAILED"),
    ]
    return {run.data.tags[TRIAL_TAG] for run in runs if TRIAL_TAG in run.data.tags}


def _children(mlflow_client: Any, parent_id: str, status: str) -> list[Any]:
    """The parent's child runs in ``status``."""
    parent = mlflow_client.get_run(parent_id)
    return mlflow_client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and attributes.status = '{status}'",
        max_results=5000,
    )


def start_child(
    mlflow_client: Any, experiment_id: str, parent_id: str, trial_id: str, config: Mapping
) -> str:
    """A child run for one trial, with its config as params; its run id."""
    run = mlflow_client.create_run(
        experiment_id,
        run_name=f"trial_{trial_id}",
        tags={PARENT_TAG: parent_id, TRIAL_TAG: trial_id, STATUS_TAG: "running"},
    )
    log_params(mlflow_client, run.info.run_id, config)
    return run.info.run_id


def log_result(mlflow_client: Any, run_id: str, result: Mapping[str, Any], step: int) -> None:
    """The objective's numeric metrics of one report, at ``step``, in one batch."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), now, step)
        for key, value in result.items()
        if key not in TUNE_KEYS
        and isinstance(value, Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
    ]
    for start in range(0, len(metrics), METRICS_PER_BATCH):
        mlflow_client.log_batch(run_id, metrics=metrics[start : start + METRICS_PER_BATCH])


def end_child(
    mlflow_client: Any,
    run_id: str,
    status: str,
    error: str | None = None,
    trace: str | None = None,
) -> None:
    """Tag the trial's outcome (completed, stopped, failed) and end its run; a failure's
    message goes in the ``search.error`` tag and its traceback in ``error.txt``."""
    mlflow_client.set_tag(run_id, STATUS_TAG, status)
    if error:
        mlflow_client.set_tag(run_id, "search.error", error[:PARAM_VALUE_LIMIT])
    if trace:
        mlflow_client.log_text(run_id, trace, "error.txt")
    mlflow_client.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")


def log_params(mlflow_client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    """``params`` (nested mappings as dotted keys) as MLflow params, in batches."""
    from mlflow.entities import Param

    flat = [Param(k, v) for k, v in flatten_params(params).items()]
    for start in range(0, len(flat), PARAMS_PER_BATCH):
        mlflow_client.log_batch(run_id, params=flat[start : start + PARAMS_PER_BATCH])


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as dotted keys (``metric_key``); values as strings cut to MLflow's
    length limit."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[metric_key(name)] = str(value)[:PARAM_VALUE_LIMIT]
    return flat


def metric_key(name: str) -> str:
    """A param or metric name MLflow accepts."""
    return _BAD_KEY_CHARS.sub("_", name)
