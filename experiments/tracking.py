"""MLflow tracking: one parent run per experiment (or study), one child run per unit of work.

An experiment is the parent and each (task, method) a child; a search study is the parent and
each trial a child. Children carry the ``mlflow.parentRunId`` tag, which is what nests them in
the MLflow UI. The store defaults to SQLite under the output folder with an absolute URI (MLflow's
own default is relative to the working directory, which Ray Tune changes per trial), and
artifacts of local stores go to ``OUTPUT/mlartifacts``.

Cost: metrics go through ``log_batch`` (up to 1000 per call) because one ``log_metric`` call costs
a SQLite transaction (tens of ms on a loaded machine); ``Tracker.seconds`` adds up the wall time
of every tracking call, including the lazy ``import mlflow`` and the creation of the database, so
that the runner can report the overhead. ``experiments/benchmarks/tracking_overhead.py`` compares
batched and per-metric logging.

A new SQLite store is a copy of an empty, migrated one cached per MLflow version
(``~/.cache/dipswarm/mlflow-<version>.db``, or under ``XDG_CACHE_HOME``): MLflow's 69 schema
migrations take 1.8 s on an idle 2-core machine and 16 s on a loaded one, the copy about 0.3 s.
MLflow still checks the copy's schema revision when it opens it.

Only one process should write to a SQLite store (the driver); for several writers run
``mlflow server`` and pass its ``http://`` URI. mlflow is imported lazily: importing this module
stays light.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shlex
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from importlib.metadata import version
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlparse

from search.tracking import (
    EXPERIMENT_KIND_TAG,
    METRICS_PER_BATCH,
    PARAMS_PER_BATCH,
    PARENT_TAG,
    RUNS_KIND,
    SQLITE_PREFIX,
    absolute_sqlite,
    flatten_params,
    mark_runs_kind,
    metric_key,
)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# Stores reached through a server: MLflow (not this process) decides where artifacts go.
REMOTE_SCHEMES = frozenset({"http", "https", "databricks"})
DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")
RUNS_FILE = "mlflow_runs.json"  # in the output folder: the ids of its parent and child runs
UI_ADDRESS = "http://127.0.0.1:5000"  # where ``Tracker.ui_command`` serves the UI


def default_tracking_uri(output: str | Path) -> str:
    """The default store: an absolute SQLite URI, ``OUTPUT/mlflow.db``."""
    return f"{SQLITE_PREFIX}{Path(output).expanduser().resolve()}/mlflow.db"


def resolve_tracking_uri(uri: str | None, output: str | Path) -> str:
    """An absolute tracking URI for ``uri``, so that it means the same store from any directory.

    - ``None`` or ``""``: ``default_tracking_uri(output)``.
    - ``sqlite:///rel.db``: made absolute against the current directory (as MLflow reads it now).
    - A plain path ending in .db/.sqlite/.sqlite3: ``sqlite:///`` + its absolute path.
    - A plain directory path or a ``file:`` URI (MLflow's file store, which raises since MLflow
      3.13): converted to SQLite in that directory, ``DIR/mlflow.db``. A directory that already
      holds a file store raises ``ValueError`` (its runs would silently be left behind) saying how
      to migrate it; with ``MLFLOW_ALLOW_FILE_STORE=true`` the file store is used as such.
    - Anything else (``http(s)://``, ``databricks``, ``postgresql://``, ...): unchanged;
      a bare ``databricks`` is a URI too, not a folder.
    """
    if not uri:
        return default_tracking_uri(output)
    if uri.lower() == "databricks":  # MLflow's name for the default Databricks workspace
        return uri
    scheme, sep, _ = uri.partition(":")
    if not sep or len(scheme) == 1:  # no scheme, or a Windows drive letter
        return _path_uri(Path(uri))
    scheme = scheme.lower()
    if scheme == "sqlite":
        return absolute_sqlite(uri)
    if scheme == "file":
        return _directory_uri(Path(unquote(urlparse(uri).path)))
    return uri


def _path_uri(path: Path) -> str:
    """A plain path: a SQLite database file, or a directory to hold one."""
    path = path.expanduser().resolve()
    if path.suffix.lower() in DB_SUFFIXES:
        return f"{SQLITE_PREFIX}{path}"
    return _directory_uri(path)


def _directory_uri(path: Path) -> str:
    """A directory given as the store: SQLite inside it, unless it is an existing file store."""
    path = path.expanduser().resolve()
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true"):
        return path.as_uri()
    if path.is_dir() and any(path.glob("*/meta.yaml")):
        raise ValueError(
            f"{path} is an MLflow file store, which MLflow 3.13+ no longer opens by default. "
            f"Migrate it (`mlflow migrate-filestore --source {path} --target "
            f"{SQLITE_PREFIX}{path}.db`) and pass that sqlite URI, or set "
            "MLFLOW_ALLOW_FILE_STORE=true to keep using the file store."
        )
    return f"{SQLITE_PREFIX}{path}/mlflow.db"


def _number(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing or not finite (MLflow plots break)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def template_path() -> Path:
    """The cached empty SQLite store of the installed MLflow version."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dipswarm" / f"mlflow-{version('mlflow')}.db"


def _seed_sqlite(database: Path, artifacts: Path) -> None:
    """Start a new SQLite store as a copy of the cached empty one (see the module docstring).

    Its Default experiment is pointed at ``artifacts`` (MLflow would use the working
    directory). On any file-system error MLflow creates the database itself, as usual.
    """
    template = template_path()
    try:
        if not template.exists():
            _build_template(template)
        shutil.copyfile(template, database)
    except OSError:
        database.unlink(missing_ok=True)
        return
    with closing(sqlite3.connect(database)) as db, db:
        db.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (str(artifacts),),
        )


def _build_template(template: Path) -> None:
    """Create and migrate an empty store, then move it into place atomically."""
    from mlflow.tracking import MlflowClient

    template.parent.mkdir(parents=True, exist_ok=True)
    partial = template.with_name(f"{template.name}.{os.getpid()}.tmp")
    MlflowClient(tracking_uri=f"{SQLITE_PREFIX}{partial}").search_experiments()
    os.replace(partial, template)


_BACKGROUND_IMPORTS: list[threading.Thread] = []


def import_in_background() -> threading.Thread:
    """Start importing mlflow (seconds on a small CPU) in a thread, so that it overlaps the
    experiment's own start-up instead of adding to the tracking time. Tracker waits for it
    before its own first import: two threads importing mlflow at once can each see the other's
    half-initialised modules."""

    def load() -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        importlib.import_module("mlflow.tracking")
        # The SQLite store's modules (SQLAlchemy models, alembic), which MLflow imports only
        # when the first client opens a store: 1.5-2 s more that Tracker.start would wait for.
        importlib.import_module("mlflow.store.tracking.sqlalchemy_store")

    thread = threading.Thread(target=load, name="mlflow-import", daemon=True)
    _BACKGROUND_IMPORTS.append(thread)
    thread.start()
    return thread


def wait_for_background_import() -> None:
    """Join the background mlflow imports started so far (see ``import_in_background``)."""
    while _BACKGROUND_IMPORTS:
        _BACKGROUND_IMPORTS.pop().join()


class _Clock:
    """Wall time spent inside tracking calls, shared by a tracker and its runs."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextmanager
    def timed(self) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - began


class ChildRun:
    """Handle on one MLflow run; a context manager that ends the run.

    Leaving the ``with`` block normally ends the run FINISHED; an exception ends it FAILED
    (KILLED for KeyboardInterrupt and other non-``Exception`` errors) and propagates. Without
    a client (tracking disabled) every method is a no-op.
    """

    def __init__(self, client: Any, run_id: str, clock: _Clock) -> None:
        self._client = client
        self.run_id = run_id
        self._clock = clock
        self._ended = False

    def __enter__(self) -> ChildRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.end("FINISHED")
        else:
            self.end("FAILED" if issubclass(exc_type, Exception) else "KILLED")

    def end(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED or KILLED); later calls do nothing."""
        if self._client is None or self._ended:
            return
        with self._clock.timed():
            self._client.set_terminated(self.run_id, status)
        self._ended = True

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params (nested mappings flattened with dots), 100 per ``log_batch`` call."""
        if self._client is None:
            return
        from mlflow.entities import Param

        with self._clock.timed():
            entries = [Param(k, v) for k, v in flatten_params(params).items()]
            for chunk in _chunks(entries, PARAMS_PER_BATCH):
                self._client.log_batch(self.run_id, params=chunk)

    def log_traces(self, traces: Mapping[str, Sequence[float | None]], prefix: str = "") -> None:
        """Per-step series as metrics ``prefix + name`` with step = index, batched.

        None, NaN and infinite values are skipped (the step keeps its index). A non-empty
        ``prefix`` without a trailing separator gets "/" (``"test_0003"`` -> ``"test_0003/"``).
        """
        if self._client is None:
            return
        if prefix and not prefix.endswith(("/", ".", "_", "-", ":")):
            prefix += "/"
        with self._clock.timed():
            stamp = _now_ms()
            points = [
                (f"{prefix}{name}", number, step)
                for name, series in traces.items()
                for step, value in enumerate(series)
                if (number := _number(value)) is not None
            ]
            self._log_points(points, stamp)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Metrics at ``step`` (0 when None) in one batch; non-finite values skipped."""
        if self._client is None:
            return
        with self._clock.timed():
            points = [
                (name, number, step or 0)
                for name, value in metrics.items()
                if (number := _number(value)) is not None
            ]
            self._log_points(points, _now_ms())

    def log_image(self, path: str | Path, key: str) -> None:
        """A PNG file as the artifact ``images/<key>`` (the file's suffix added if missing).

        ``key`` may contain "/" for sub-folders, e.g. ``"test_0003"`` or ``"sr/test_0003.png"``.
        """
        if self._client is None:
            return
        source = Path(path)
        target = PurePosixPath("images", key)
        if target.is_absolute() or ".." in target.parts:
            raise ValueError(f"image key {key!r} must be a relative path inside images/")
        if target.suffix.lower() != source.suffix.lower():
            target = target.with_name(target.name + source.suffix)
        with self._clock.timed():
            self._upload_as(source, str(target.parent), target.name)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file, or a directory's contents, under ``artifact_path`` (the root when None)."""
        if self._client is None:
            return
        path = Path(path)
        with self._clock.timed():
            if path.is_dir():
                self._client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self._client.log_artifact(self.run_id, str(path), artifact_path)

    def _log_points(self, points: Sequence[tuple[str, float, int]], stamp: int) -> None:
        """(name, value, step) triples as metrics, at most 1000 per ``log_batch`` call."""
        from mlflow.entities import Metric

        metrics = [Metric(metric_key(name), value, stamp, step) for name, value, step in points]
        for chunk in _chunks(metrics, METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=chunk)

    def _upload_as(self, source: Path, folder: str, name: str) -> None:
        """Upload ``source`` as ``folder/name`` (through a temporary copy when renamed)."""
        if source.name == name:
            self._client.log_artifact(self.run_id, str(source), folder)
            return
        with tempfile.TemporaryDirectory() as tmp:
            renamed = Path(tmp) / name
            shutil.copyfile(source, renamed)
            self._client.log_artifact(self.run_id, str(renamed), folder)


class Tracker:
    """One parent run and its child runs in one MLflow experiment.

    Nothing touches MLflow before ``start()`` (constructing a tracker to print ``ui_command()``
    is free). With ``enabled=False`` every method is a cheap no-op. The run ids are kept in
    ``OUTPUT/mlflow_runs.json`` (``RUNS_FILE``), so that a resumed run continues the same
    parent and children (``start(..., resume=True)``) and every image's artifacts end up in
    one tree. The experiment is tagged as one of runs (``mlflow.experimentKind``), so that the
    MLflow 3 UI opens it on its runs, not on the GenAI overview.
    """

    def __init__(
        self, uri: str | None, experiment: str, output: str | Path, enabled: bool = True
    ) -> None:
        self.output = Path(output).expanduser().resolve()
        self.enabled = enabled
        self.uri = resolve_tracking_uri(uri, self.output) if enabled else ""
        self.experiment = experiment
        self.experiment_id = ""
        self._clock = _Clock()
        self._client: Any = None
        self._parent = ChildRun(None, "", self._clock)
        self._children: dict[str, str] = {}  # child run name -> run id

    @property
    def run_id(self) -> str:
        """The parent run's id ("" before ``start()`` or when disabled)."""
        return self._parent.run_id

    @property
    def seconds(self) -> float:
        """Total wall time spent inside tracking calls so far."""
        return self._clock.seconds

    def start(
        self,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
        resume: bool = False,
    ) -> str:
        """Create the parent run with its params and tags; returns its id.

        Runs of the output's record (``RUNS_FILE``, same store and experiment) still RUNNING
        were left so by a killed process: they end KILLED. With ``resume`` the recorded parent
        is continued instead (RUNNING again, and ``child`` continues its children); it gets
        only the params it does not hold yet (MLflow params cannot change; a resume's config
        changes are recorded in the output folder).
        """
        if not self.enabled:
            return ""
        if self.run_id:
            raise RuntimeError(f"the parent run {self.run_id} was already started")
        with self._clock.timed():
            self._client = self._connect()
            self.experiment_id = self._experiment_id()
            stored = self._stored_runs()
            self._close_stale(stored)
            run = self._reopen(stored.get("parent", "")) if resume else None
            if run is not None:
                self._children = dict(stored.get("children", {}))
            else:
                run = self._client.create_run(
                    self.experiment_id, run_name=run_name, tags=dict(tags or {})
                )
            self._save_runs(run.info.run_id)
        self._parent = ChildRun(self._client, run.info.run_id, self._clock)
        self._parent.log_params(_not_held(params, run))
        return self.run_id

    def child(
        self,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
    ) -> ChildRun:
        """A run nested under the parent, with its params; use it as a context manager. A
        resumed parent's child of the same name is continued (params as in ``start``)."""
        if not self.enabled:
            return ChildRun(None, "", self._clock)
        if not self.run_id:
            raise RuntimeError("start() the parent run before creating children")
        with self._clock.timed():
            run = self._reopen(self._children.get(run_name, ""))
            if run is None:
                run = self._client.create_run(
                    self.experiment_id,
                    run_name=run_name,
                    tags={**(tags or {}), PARENT_TAG: self.run_id},
                )
            self._children[run_name] = run.info.run_id
            self._save_runs(self.run_id)
        child = ChildRun(self._client, run.info.run_id, self._clock)
        child.log_params(_not_held(params, run))
        return child

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file or directory as an artifact of the parent run."""
        self._parent.log_artifact(path, artifact_path)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Metrics of the parent run (non-finite values skipped)."""
        self._parent.log_metrics(metrics, step)

    def finish(self, status: str = "FINISHED") -> None:
        """End the parent run (FINISHED, FAILED or KILLED); does nothing if never started."""
        self._parent.end(status)

    def ui_command(self) -> str:
        """The command that browses these runs.

        Local stores: ``mlflow ui --backend-store-uri URI --host 127.0.0.1 --port 5000``, then open
        http://127.0.0.1:5000 (MLflow 3.17 needs no extra flags for local browsing: its security
        middleware admits localhost and private-network Host headers; behind another host name
        add ``--allowed-hosts``). A tracking server already serves the UI: its URL is opened.
        Databricks has its own UI: "".
        """
        if not self.enabled or self.uri.startswith("databricks"):
            return ""
        if self.uri.startswith(("http://", "https://")):
            return f"python -m webbrowser {shlex.quote(self.uri)}"
        command = f"mlflow ui --backend-store-uri {shlex.quote(self.uri)} --host 127.0.0.1"
        if self.uri.startswith("file:"):  # MLflow refuses file stores without this opt-in
            command = f"MLFLOW_ALLOW_FILE_STORE=true {command}"
        return f"{command} --port 5000"

    def runs_url(self) -> str:
        """The address of the experiment's runs page in the UI that ``ui_command`` opens
        (``#/experiments/ID/runs``); "" when tracking is off, on Databricks, or while the
        experiment does not exist yet."""
        if not self.enabled or self.uri.startswith("databricks"):
            return ""
        experiment_id = self.experiment_id or self._existing_experiment_id()
        if not experiment_id:
            return ""
        server = self.uri.startswith(("http://", "https://"))
        address = self.uri.rstrip("/") if server else UI_ADDRESS
        return f"{address}/#/experiments/{experiment_id}/runs"

    def _existing_experiment_id(self) -> str:
        """The experiment's id in the store, without creating the store or the experiment."""
        if self.uri.startswith(SQLITE_PREFIX):
            database = self.uri[len(SQLITE_PREFIX) :].partition("?")[0]
            if not Path(database).is_file():
                return ""
        wait_for_background_import()
        from mlflow.tracking import MlflowClient

        found = MlflowClient(tracking_uri=self.uri).get_experiment_by_name(self.experiment)
        return found.experiment_id if found is not None else ""

    def _stored_runs(self) -> dict[str, Any]:
        """The output's record of run ids, if it is of this store and experiment."""
        try:
            stored = json.loads((self.output / RUNS_FILE).read_text())
        except (OSError, ValueError):
            return {}
        if stored.get("uri") != self.uri or stored.get("experiment_id") != self.experiment_id:
            return {}
        return stored

    def _save_runs(self, parent: str) -> None:
        """Record the parent's and children's ids in the output folder (atomically)."""
        record = {
            "uri": self.uri,
            "experiment": self.experiment,
            "experiment_id": self.experiment_id,
            "parent": parent,
            "children": self._children,
        }
        self.output.mkdir(parents=True, exist_ok=True)
        temp = self.output / f"{RUNS_FILE}.tmp"
        temp.write_text(json.dumps(record, indent=2))
        os.replace(temp, self.output / RUNS_FILE)

    def _close_stale(self, stored: Mapping[str, Any]) -> None:
        """End KILLED the recorded runs still RUNNING (their process was killed)."""
        for run_id in (stored.get("parent", ""), *stored.get("children", {}).values()):
            run = self._get_run(run_id)
            if run is not None and run.info.status == "RUNNING":
                self._client.set_terminated(run_id, "KILLED")

    def _reopen(self, run_id: str) -> Any:
        """The recorded run ``run_id`` marked RUNNING again, or None when it is gone (deleted,
        or in another experiment)."""
        run = self._get_run(run_id)
        if run is None or run.info.lifecycle_stage != "active":
            return None
        if run.info.experiment_id != self.experiment_id:
            return None
        self._client.update_run(run_id, status="RUNNING")
        return run

    def _get_run(self, run_id: str) -> Any:
        """The run ``run_id`` of this store, or None if there is none."""
        from mlflow.exceptions import MlflowException

        if not run_id:
            return None
        try:
            return self._client.get_run(run_id)
        except MlflowException:
            return None

    def _connect(self) -> Any:
        """An MlflowClient bound to this tracker's URI (no global MLflow state is touched)."""
        wait_for_background_import()
        from mlflow.tracking import MlflowClient

        if self.uri.startswith(SQLITE_PREFIX):
            database = self.uri[len(SQLITE_PREFIX) :].partition("?")[0]
            if database and database != ":memory:" and not Path(database).exists():
                Path(database).parent.mkdir(parents=True, exist_ok=True)
                _seed_sqlite(Path(database), self.output / "mlartifacts")
        return MlflowClient(tracking_uri=self.uri)

    def _experiment_id(self) -> str:
        """The experiment's id, created (artifacts under OUTPUT/mlartifacts) or restored."""
        found = self._client.get_experiment_by_name(self.experiment)
        if found is None:
            scheme = self.uri.partition(":")[0].lower()
            location = None if scheme in REMOTE_SCHEMES else str(self.output / "mlartifacts")
            return self._client.create_experiment(
                self.experiment, artifact_location=location, tags={EXPERIMENT_KIND_TAG: RUNS_KIND}
            )
        if found.lifecycle_stage == "deleted":
            self._client.restore_experiment(found.experiment_id)
        mark_runs_kind(self._client, found)
        return found.experiment_id


def _not_held(params: Mapping[str, Any], run: Any) -> dict[str, str]:
    """``params`` flattened, less those the (continued) ``run`` holds already."""
    held = run.data.params
    return {key: value for key, value in flatten_params(params).items() if key not in held}
