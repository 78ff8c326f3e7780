"""Loading finished runs: the per-image ``results.csv`` of output folders (written by
experiments/runner.py), or the final metrics the runner logs to MLflow (one child run per task
and method)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from experiments.metrics import COVERAGE_COLUMNS
from search.tracking import PARENT_TAG

# final metrics the runner logs per child run (one child run per task and method)
MLFLOW_METRICS = (
    "psnr_mean",
    "psnr_std",
    "ssim_mean",
    "ssim_std",
    "lpips_mean",
    "lpips_std",
    *(f"{name}_{stat}" for name in COVERAGE_COLUMNS for stat in ("mean", "std")),
    "nfe",
    "seconds_per_image",
    "images",
    "failed",
)
STRING_COLUMNS = ("task", "method", "image", "status", "error", "lpips_backbone")


def load_results(output: str | Path) -> pd.DataFrame:
    """Per-image rows of one output folder's ``results.csv`` (metrics NaN on failed rows)."""
    path = Path(output) / "results.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no results.csv in {Path(output)} (has a run written there?)")
    head = pd.read_csv(path, nrows=0).columns
    dtypes = {name: str for name in STRING_COLUMNS if name in head}
    return pd.read_csv(path, dtype=dtypes)


def load_many(outputs: Sequence[str | Path]) -> pd.DataFrame:
    """Rows of several output folders, with a leading ``run`` column naming the folder.

    The folder's name labels its rows; full paths are used when two names coincide.
    """
    paths = [Path(o) for o in outputs]
    labels = [p.name for p in paths]
    if len(set(labels)) < len(labels):
        labels = [str(p) for p in paths]
    frames = [load_results(p).assign(run=label) for p, label in zip(paths, labels, strict=True)]
    df = pd.concat(frames, ignore_index=True)
    return df[["run", *[c for c in df.columns if c != "run"]]]


def load_mlflow(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """One row per finished child run (task, method) of ``experiment`` with its final metrics.

    Child runs are runs with a parent run; ``run`` is the parent run's name, so that a
    repeated experiment stays apart. Children without the ``task`` and ``method`` params
    (for instance tuning trials) and children not FINISHED are left out.
    """
    from mlflow.tracking import MlflowClient

    _check_sqlite_exists(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} at {tracking_uri}")
    runs = _all_runs(client, found.experiment_id)
    parent_names = {r.info.run_id: r.info.run_name for r in runs if PARENT_TAG not in r.data.tags}
    rows = [_mlflow_row(run, parent_names) for run in runs if _is_result_run(run)]
    columns = ["run", "task", "method", *MLFLOW_METRICS, "lpips_backbone", "run_id"]
    return pd.DataFrame(rows, columns=columns)


def _check_sqlite_exists(tracking_uri: str) -> None:
    """Refuse a missing SQLite store: MLflow would silently create an empty one."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix) and not Path(tracking_uri[len(prefix) :]).is_file():
        raise FileNotFoundError(f"no MLflow database at {tracking_uri}")


def _all_runs(client: object, experiment_id: str) -> list:
    """Every active run of the experiment, oldest first (search_runs is paged)."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            order_by=["attributes.start_time ASC"],
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _is_result_run(run: object) -> bool:
    """A finished child run that carries the runner's ``task`` and ``method`` params."""
    params = run.data.params
    return (
        PARENT_TAG in run.data.tags
        and run.info.status == "FINISHED"
        and "task" in params
        and "method" in params
    )


def _mlflow_row(run: object, parent_names: dict[str, str]) -> dict:
    """The table row of one child run: params, final metrics (NaN where not logged)."""
    parent = run.data.tags[PARENT_TAG]
    params, metrics = run.data.params, run.data.metrics
    row = {
        "run": parent_names.get(parent, parent),
        "task": params["task"],
        "method": params["method"],
        "lpips_backbone": params.get("lpips_backbone"),
        "run_id": run.info.run_id,
    }
    row.update({name: metrics.get(name, math.nan) for name in MLFLOW_METRICS})
    return row


# ---------------------------------------------------------------- tables
