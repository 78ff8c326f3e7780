"""``tune``: a hyperparameter study of an objective over a space with Ray Tune + Optuna + ASHA.

Layout of a study under ``storage_dir`` (absolute):

- ``storage_dir/NAME/``: the Ray Tune experiment (state for ``Tuner.restore``, one folder per
  trial) and ``search_study.json`` (the study's unique Optuna name, its settings and MLflow ids).
- ``storage_dir/optuna.journal``: Optuna's journal storage, shared by the studies of this folder
  under unique names (``NAME-xxxxxxxx``); ``optuna-dashboard storage_dir/optuna.journal`` opens
  it.

Interrupting a study (Ctrl-C or SIGUSR1: Tune stops gracefully and saves its state) and calling
``tune(..., resume=True)`` again restores it: finished trials are kept as they were, trials cut
off mid-way restart from scratch with the same config, and the search goes on to
``num_samples``. Failed trials stay failed.

A driver killed outright (SIGKILL, a crash) saves nothing; ``resume=True`` then restores Tune's
last periodic save (every ``SNAPSHOT_S`` seconds) and reconciles it with the journal, which
Optuna writes at once (``backend.Searcher.restore``): a trial finished in the journal keeps its
Optuna record (when Tune's save still had it running, Tune runs it again for its results table
row), a journal trial that Tune's save did not hold yet is told FAIL if it was running or kept
as it is if finished, and both appear in the trials table. MLflow child runs that the killed
driver left RUNNING end as the journal says (KILLED if unfinished), and a trial Tune runs again
is not logged twice. Ray, Optuna, MLflow and pandas are imported lazily.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search import tracking
from search.objective import FAILED_KEY, FINAL_KEY, Objective, run_trial
from search.space import Dimension, Fixed, check_space, validate_point

if TYPE_CHECKING:
    import optuna
    import pandas as pd

JOURNAL = "optuna.journal"
STUDY_FILE = "search_study.json"
ASHA_DEFAULTS = {"grace_period": 1, "reduction_factor": 3, "time_attr": "step"}
STATUSES = ("completed", "stopped", "failed", "unfinished")
OPTUNA_STATUS = {"COMPLETE": "completed", "PRUNED": "stopped", "FAIL": "failed"}  # finished
# Seconds between Tune's saves of the experiment state (Ray's "auto" waits 10 s or more): what a
# SIGKILL can lose from Tune's view; a save of a small study takes milliseconds.
SNAPSHOT_S = 2


@dataclass
class StudyResult:
    """Outcome of a study: the best complete trial and a table of every trial.

    ``trials`` has one row per trial (ordered by Optuna trial number): ``trial_id``, ``number``,
    ``status`` (completed | stopped: early-stopped by ASHA | failed | unfinished: cut off by an
    interruption), the metric (final value; the last low-fidelity value for stopped trials; NaN
    for failed ones), ``steps`` (the last step reached: the compute used), ``time_s``, ``error``,
    the objective's other numeric results and ``config/<name>`` columns. The best trial is chosen
    among completed trials only.
    """

    name: str
    study_name: str
    metric: str
    mode: str
    best_config: dict[str, Any] | None
    best_value: float | None
    best_trial_id: str | None
    trials: pd.DataFrame
    experiment_path: Path
    optuna_journal: Path
    mlflow_uri: str | None
    mlflow_parent_run_id: str | None
    interrupted: bool

    @property
    def total_steps(self) -> int:
        """Steps run by all trials together (the study's compute, in the objective's units)."""
        return int(self.trials["steps"].sum())

    def optuna_study(self) -> optuna.Study:
        """The study as stored by Optuna (trial states, intermediate values)."""
        import optuna

        return optuna.load_study(study_name=self.study_name, storage=_journal(self.optuna_journal))


def tune(
    objective: Objective,
    space: Mapping[str, Dimension],
    metric: str,
    mode: str,
    num_samples: int,
    *,
    name: str,
    storage_dir: str | Path,
    sampler: Any = "tpe",
    seed: int = 0,
    asha: Mapping[str, Any] | None = None,
    max_concurrent: int = 1,
    resources: Mapping[str, float] | Sequence[Mapping[str, float]] | None = None,
    points_to_evaluate: Sequence[Mapping[str, Any]] | None = None,
    mlflow_uri: str | Path | None = None,
    mlflow_experiment: str | None = None,
    resume: bool = False,
    reuse_actors: bool = True,
    verbose: int = 0,
) -> StudyResult:
    """Search ``space`` for the config that minimises or maximises ``metric`` of ``objective``.

    ``objective(config, report)`` reports intermediate metrics and returns its final ones
    (search.objective). ``sampler``: "tpe" (default), "gp",
    "cmaes", "random", or an Optuna sampler. ``asha``: ``{"max_t": ...}`` plus optional
    ``grace_period`` (1), ``reduction_factor`` (3) and ``time_attr`` (the step key, "step");
    None disables early stopping. ASHA never cuts a trial at ``max_t``: a trial that survives
    every rung runs to its own end, so its final result is kept. ``resources``: per trial,
    ``{"cpu": 1, "gpu": 0}`` or a list of placement-group bundles, the first for the trial
    itself and the others for actors it starts (``[{"CPU": 1}] + [{"CPU": 1, "GPU": 0.5}] * k``).
    ``points_to_evaluate``: configs tried first. ``mlflow_uri``: log the study (made absolute;
    None disables MLflow). ``resume``: continue the study stored as ``storage_dir/name`` if there
    is one (its stored settings win), else start it; without ``resume`` an existing study is an
    error. ``reuse_actors`` keeps trial processes between trials (4x faster here on small
    trials). ``verbose``: Ray Tune's verbosity; at 0 Tune and Optuna print nothing of their own.
    Uses the running Ray instance, or starts a local one. Guide: docs/search.md.

    Example (CPU, about 15 s with Ray's start): a 2-trial study of a toy objective.

        >>> import contextlib, io, tempfile, search
        >>> def objective(config, report):
        ...     report({"loss": (config["x"] - 0.3) ** 2, "step": 1})
        ...     return {"loss": (config["x"] - 0.3) ** 2}
        >>> quiet = contextlib.redirect_stdout(io.StringIO())  # Tune's progress table
        >>> with tempfile.TemporaryDirectory() as folder, quiet:
        ...     result = search.tune(
        ...         objective, {"x": search.Float(0.0, 1.0)}, "loss", "min", 2,
        ...         name="toy", storage_dir=folder, seed=0,
        ...     )
        >>> result.trials["status"].tolist(), 0.0 <= result.best_value <= 0.49
        (['completed', 'completed'], True)
        >>> sorted(result.best_config)
        ['x']
    """
    from ray import tune as ray_tune

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if verbose == 0:
        _quiet()
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", str(SNAPSHOT_S))
    space = check_space(space)
    settings = _settings(metric, mode, num_samples, sampler, seed, asha, max_concurrent, name)
    storage_dir = Path(storage_dir).expanduser().resolve()
    experiment = storage_dir / name
    trainable = _trainable(objective, metric, settings["step_key"], resources)
    if ray_tune.Tuner.can_restore(str(experiment)):
        if not resume:
            raise FileExistsError(
                f"study {name!r} already exists in {storage_dir}; pass resume=True to continue "
                "it, or choose another name"
            )
        meta = _load_meta(experiment, settings)
        tuner = ray_tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True)
        if meta["mlflow_parent_run_id"]:
            tracking.reopen_parent(
                meta["mlflow_uri"], meta["mlflow_parent_run_id"], _outcomes(meta)
            )
    else:
        from search.backend import make_sampler

        sampler = make_sampler(sampler, seed)
        points = [validate_point(space, p) for p in points_to_evaluate or ()]
        meta = _new_meta(settings, storage_dir, experiment, space, mlflow_uri, mlflow_experiment)
        searcher = _searcher(space, settings, meta, points, sampler)
        tuner = _new_tuner(trainable, searcher, settings, meta, reuse_actors, verbose)
    grid = tuner.fit()
    result = _collect(grid, meta, settings, space)
    if meta["mlflow_parent_run_id"]:
        tracking.close_parent(
            meta["mlflow_uri"], meta["mlflow_parent_run_id"], metric, result.best_value,
            result.best_config, finished=not result.interrupted,
        )  # fmt: skip
    return result


def save_best_yaml(
    result: StudyResult, path: str | Path, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write the best config as a YAML preset (``extra`` keys first, then the config).

    A header comment names the study, the metric and the best trial. Keys in both ``extra`` and
    the config raise ``ValueError``.
    """
    import yaml

    if result.best_config is None:
        raise ValueError(f"study {result.study_name} has no completed trial: no best config")
    data = {key: _plain(value) for key, value in (extra or {}).items()}
    clash = sorted(set(data) & set(result.best_config))
    if clash:
        raise ValueError(f"extra keys {', '.join(clash)} clash with the searched config")
    data.update({key: _plain(value) for key, value in result.best_config.items()})
    header = (
        f"# best config of study {result.study_name}: {result.metric} = {result.best_value:.6g}"
        f" ({result.mode}), trial {result.best_trial_id}\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return path


def optuna_dashboard_command(result: StudyResult) -> str:
    """The shell command that opens the study storage in optuna-dashboard (``pip install
    optuna-dashboard``; it reads a journal file given as its path)."""
    return f"optuna-dashboard {shlex.quote(str(result.optuna_journal))}"


def _settings(
    metric: str,
    mode: str,
    num_samples: int,
    sampler: Any,
    seed: int,
    asha: Mapping[str, Any] | None,
    max_concurrent: int,
    name: str,
) -> dict[str, Any]:
    """Validated study settings (what resuming must match, and what MLflow records)."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if num_samples < 1 or max_concurrent < 1:
        raise ValueError("num_samples and max_concurrent must be at least 1")
    if not name or os.sep in name:
        raise ValueError(f"name must be a plain folder name, got {name!r}")
    asha = {**ASHA_DEFAULTS, **asha} if asha is not None else None
    if asha is not None and "max_t" not in asha:
        raise ValueError("asha needs max_t (the last step of a trial)")
    step_key = asha["time_attr"] if asha else ASHA_DEFAULTS["time_attr"]
    if metric == step_key:
        raise ValueError(f"the metric cannot be the step key {step_key!r}")
    return {
        "metric": metric,
        "mode": mode,
        "num_samples": num_samples,
        "sampler": sampler if isinstance(sampler, str) else type(sampler).__name__,
        "seed": seed,
        "asha": asha,
        "max_concurrent": max_concurrent,
        "step_key": step_key,
    }


def _new_meta(
    settings: Mapping[str, Any],
    storage_dir: Path,
    experiment: Path,
    space: Mapping[str, Dimension],
    mlflow_uri: str | Path | None,
    mlflow_experiment: str | None,
) -> dict[str, Any]:
    """Record a new study: unique Optuna name, storage paths, MLflow parent run."""
    study_name = f"{experiment.name}-{uuid.uuid4().hex[:8]}"
    meta = {
        **settings,
        "name": experiment.name,
        "study_name": study_name,
        "experiment_path": str(experiment),
        "optuna_journal": str(storage_dir / JOURNAL),
        "space": {key: repr(dim) for key, dim in space.items()},
        "mlflow_uri": tracking.absolute_uri(mlflow_uri) if mlflow_uri else None,
        "mlflow_experiment_id": None,
        "mlflow_parent_run_id": None,
    }
    if meta["mlflow_uri"]:
        params = {k: meta[k] for k in ("metric", "mode", "num_samples", "sampler", "seed")}
        params.update(asha=meta["asha"] or "none", space=meta["space"])
        meta["mlflow_experiment_id"], meta["mlflow_parent_run_id"] = tracking.open_parent(
            meta["mlflow_uri"], mlflow_experiment or experiment.name, study_name, params,
            storage_dir / "mlartifacts",
        )  # fmt: skip
    experiment.mkdir(parents=True, exist_ok=True)
    (experiment / STUDY_FILE).write_text(json.dumps(meta, indent=2))
    return meta


def _load_meta(experiment: Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """A stored study's record; resuming with a different metric, mode or size is an error."""
    meta = json.loads((experiment / STUDY_FILE).read_text())
    for key in ("metric", "mode", "num_samples", "step_key"):
        if meta[key] != settings[key]:
            raise ValueError(
                f"study {meta['study_name']} was started with {key}={meta[key]!r}; cannot "
                f"resume it with {key}={settings[key]!r}"
            )
    return meta


def _trainable(
    objective: Objective,
    metric: str,
    step_key: str,
    resources: Mapping[str, float] | Sequence[Mapping[str, float]] | None,
) -> Any:
    """The objective as a Tune function trainable with its per-trial resources."""
    from ray import tune as ray_tune

    fn = ray_tune.with_parameters(run_trial, objective=objective, metric=metric, step_key=step_key)
    if resources is None or isinstance(resources, Mapping):
        return ray_tune.with_resources(fn, dict(resources or {"cpu": 1}))
    bundles = [dict(bundle) for bundle in resources]
    return ray_tune.with_resources(fn, ray_tune.PlacementGroupFactory(bundles))


def _searcher(
    space: Mapping[str, Dimension],
    settings: Mapping[str, Any],
    meta: Mapping[str, Any],
    points: list[dict[str, Any]],
    sampler: Any,
) -> Any:
    """The Optuna searcher of a new study, on the journal storage under its unique name."""
    from search import backend
    from search.space import DefineByRun

    return backend.Searcher(
        space=DefineByRun(space),
        metric=settings["metric"],
        mode=settings["mode"],
        points_to_evaluate=points or None,
        sampler=sampler,
        study_name=meta["study_name"],
        storage=_journal(Path(meta["optuna_journal"])),
        step_key=settings["step_key"],
    )


def _new_tuner(
    trainable: Any,
    searcher: Any,
    settings: Mapping[str, Any],
    meta: Mapping[str, Any],
    reuse_actors: bool,
    verbose: int,
) -> Any:
    """A Tuner for a new study: the searcher, ASHA, the MLflow callback."""
    from ray import tune as ray_tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    from search import backend

    metric, mode, step_key = settings["metric"], settings["mode"], settings["step_key"]
    scheduler = None
    if settings["asha"]:
        asha = settings["asha"]
        scheduler = ASHAScheduler(
            time_attr=step_key,
            max_t=asha["max_t"],
            grace_period=asha["grace_period"],
            reduction_factor=asha["reduction_factor"],
            stop_last_trials=False,
        )
    callbacks = [JsonLoggerCallback()]
    if meta["mlflow_parent_run_id"]:
        callbacks.append(
            backend.MLflowTrials(
                meta["mlflow_uri"], meta["mlflow_experiment_id"], meta["mlflow_parent_run_id"],
                step_key,
            )
        )  # fmt: skip
    return ray_tune.Tuner(
        trainable,
        tune_config=ray_tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            metric=metric,
            mode=mode,
            num_samples=settings["num_samples"],
            max_concurrent_trials=settings["max_concurrent"],
            reuse_actors=reuse_actors,
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=ray_tune.RunConfig(
            storage_path=str(Path(meta["experiment_path"]).parent),
            name=meta["name"],
            callbacks=callbacks,
            failure_config=ray_tune.FailureConfig(max_failures=0, fail_fast=False),
            verbose=verbose,
        ),
    )


def _quiet() -> None:
    """Ray Tune and Optuna print nothing of their own (``verbose=0``): Tune's default output
    engine prints its configuration box at any verbosity, the legacy one (chosen here) nothing
    at 0; ``ray.tune`` logs errors only, so neither its state-file lines nor its
    ``Tuner.restore`` advice after Ctrl-C (callers say how they resume); Optuna no "A new
    study created" line."""
    import logging

    import optuna

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _trial_dirname(trial: Any) -> str:
    """Short trial folder names (Tune's default embeds the whole config)."""
    return f"trial_{trial.trial_id}"


def _journal(path: Path) -> Any:
    """Optuna's journal storage in the file ``path``."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def _collect(
    grid: Any,
    meta: Mapping[str, Any],
    settings: Mapping[str, Any],
    space: Mapping[str, Dimension],
) -> StudyResult:
    """The study's outcome from Tune's results and Optuna's trial states, plus the finished
    journal trials that Tune never saved (a killed driver's, see the module docstring)."""
    import pandas as pd

    from search.backend import TRIAL_ATTR

    journal = Path(meta["optuna_journal"])
    journal_trials = _journal_study(journal, meta["study_name"]).trials
    optuna_trials = {t.user_attrs.get(TRIAL_ATTR): t for t in journal_trials}
    rows, configs = [], {}
    for result in grid:
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id", "")
        configs[trial_id] = dict(metrics.get("config") or {})
        rows.append(_row(metrics, result.error, optuna_trials.get(trial_id), settings))
    in_tune = len(rows)
    for trial in journal_trials:
        if trial.state.is_finished() and trial.user_attrs.get(TRIAL_ATTR) not in configs:
            row, configs[row["trial_id"]] = _journal_row(trial, space, settings)
            rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table = table.sort_values("number", na_position="last", kind="stable")
        table = table.reset_index(drop=True)
    best_id, best_value = _best(table, settings["metric"], settings["mode"])
    statuses = set(table["status"]) if not table.empty else set()
    interrupted = in_tune < settings["num_samples"] or "unfinished" in statuses
    return StudyResult(
        name=meta["name"],
        study_name=meta["study_name"],
        metric=settings["metric"],
        mode=settings["mode"],
        best_config=configs[best_id] if best_id is not None else None,
        best_value=best_value,
        best_trial_id=best_id,
        trials=table,
        experiment_path=Path(meta["experiment_path"]),
        optuna_journal=journal,
        mlflow_uri=meta["mlflow_uri"],
        mlflow_parent_run_id=meta["mlflow_parent_run_id"],
        interrupted=bool(interrupted),
    )


def _outcomes(meta: Mapping[str, Any]) -> dict[str, str]:
    """Tune trial id -> status of the trials whose Optuna record is finished."""
    from search.backend import TRIAL_ATTR

    trials = _journal_study(Path(meta["optuna_journal"]), meta["study_name"]).trials
    return {
        t.user_attrs[TRIAL_ATTR]: OPTUNA_STATUS[t.state.name]
        for t in trials
        if t.state.is_finished() and TRIAL_ATTR in t.user_attrs
    }


def _journal_study(journal: Path, study_name: str) -> Any:
    """The Optuna study in ``journal``."""
    import optuna

    return optuna.load_study(study_name=study_name, storage=_journal(journal))


def _row(
    metrics: Mapping[str, Any], error: Any, optuna_trial: Any, settings: Mapping[str, Any]
) -> dict[str, Any]:
    """One line of the trials table."""
    import optuna

    from search.backend import last_error_line

    metric, step_key = settings["metric"], settings["step_key"]
    if error is not None or FAILED_KEY in metrics:
        status = "failed"
    elif metrics.get(FINAL_KEY):
        status = "completed"
    elif optuna_trial is not None and optuna_trial.state == optuna.trial.TrialState.PRUNED:
        status = "stopped"
    else:
        status = "unfinished"
    row: dict[str, Any] = {
        "trial_id": metrics.get("trial_id", ""),
        "number": optuna_trial.number if optuna_trial is not None else math.nan,
        "status": status,
        metric: math.nan if status == "failed" else metrics.get(metric, math.nan),
        "steps": int(metrics.get(step_key, 0)),
        "time_s": metrics.get("time_total_s", math.nan),
        "error": metrics.get(FAILED_KEY) or last_error_line(error),
    }
    skip = {*tracking.TUNE_KEYS, FINAL_KEY, FAILED_KEY, step_key, metric, "time_total_s"}
    for key, value in metrics.items():
        if key not in skip and isinstance(value, int | float) and not isinstance(value, bool):
            row[key] = value
    for key, value in (metrics.get("config") or {}).items():
        row[f"config/{key}"] = value
    return row


def _journal_row(
    trial: Any, space: Mapping[str, Dimension], settings: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trials-table line and config of a finished trial known only to the journal."""
    from search.backend import CUT_OFF_ATTR, TRIAL_ATTR

    status = OPTUNA_STATUS[trial.state.name]
    steps = max(trial.intermediate_values, default=0)
    value = trial.value if trial.value is not None else trial.intermediate_values.get(steps)
    config = {
        name: dim.value if isinstance(dim, Fixed) else trial.params[name]
        for name, dim in space.items()
        if isinstance(dim, Fixed) or name in trial.params
    }
    ended, began = trial.datetime_complete, trial.datetime_start
    row: dict[str, Any] = {
        "trial_id": trial.user_attrs.get(TRIAL_ATTR, ""),
        "number": trial.number,
        "status": status,
        settings["metric"]: math.nan if status == "failed" or value is None else value,
        "steps": steps,
        "time_s": (ended - began).total_seconds() if ended and began else math.nan,
        "error": trial.user_attrs.get(CUT_OFF_ATTR, ""),
    }
    row.update({f"config/{key}": value for key, value in config.items()})
    return row, config


def _best(table: pd.DataFrame, metric: str, mode: str) -> tuple[str | None, float | None]:
    """Trial id and value of the best completed trial (None, None if there is none)."""
    if table.empty:
        return None, None
    done = table[table["status"] == "completed"]
    if done.empty:
        return None, None
    index = done[metric].idxmin() if mode == "min" else done[metric].idxmax()
    return str(done.at[index, "trial_id"]), float(done.at[index, metric])


def _plain(value: Any) -> Any:
    """Numpy or torch scalars as Python numbers (for YAML)."""
    return value.item() if hasattr(value, "item") else value
