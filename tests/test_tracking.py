"""MLflow tracking on a real SQLite store: runs, params, traces, images, URIs, the UI server.

One tracked experiment is written once per module (creating a SQLite store costs seconds) and
the tests read it back with a separate MlflowClient.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from experiments import tracking
from experiments.tracking import Tracker, default_tracking_uri, resolve_tracking_uri
from search import tracking as search_tracking

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {
    "name": "demo",
    "seed": 3,
    "tracking": {"enabled": True, "uri": None},
    "methods": {"daps": {"preset": "ffhq", "overrides": {"steps": 50}}},
    "notes": "x" * 7000,
}
TRACES = {"loss_best": [3.0, None, float("nan"), 1.5, float("inf"), 0.5], "alive": [4, 4, 3]}


def _png(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (6, 4), (200, 10, 10)).save(path)
    return path


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A finished experiment: one good child, one failed child, parent metrics and artifact.

    The store template is cached in a temporary XDG_CACHE_HOME, not in the user's home.
    """
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(cache))
        found = _track(tmp_path_factory.mktemp("run"))
    return SimpleNamespace(cache=cache, **found)


def _track(output: Path) -> dict:
    tracker = Tracker(None, "tracking-test", output)
    parent = tracker.start("demo", CONFIG, tags={"output": str(output)})
    grid = _png(output / "test_0003.png")
    with tracker.child("sr / daps", {"task": "sr", "ensemble": {"particles": 4}}) as child:
        child.log_traces(TRACES, prefix="test_0003/")
        child.log_metrics({"psnr_mean": 21.5, "lpips_mean": float("nan")})
        child.log_image(grid, "test_0003.png")
        child.log_image(grid, "renamed/grid")
        child.log_artifact(grid, "extra")
    with pytest.raises(ZeroDivisionError), tracker.child("sr / broken", {"task": "sr"}) as bad:
        bad.log_metrics({"started": 1.0})
        _ = 1 / 0
    (output / "results.csv").write_text("task,method\nsr,daps\n")
    tracker.log_artifact(output / "results.csv")
    tracker.log_metrics({"tracking_seconds": tracker.seconds})
    tracker.finish()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracker.uri)
    return {
        "tracker": tracker,
        "output": output,
        "client": client,
        "parent": parent,
        "good": child.run_id,
        "bad": bad.run_id,
    }


def test_the_limits_match_the_installed_mlflow():
    from mlflow.utils import validation

    limits = search_tracking  # the one copy of the limits, used by experiments.tracking too
    assert limits.PARAM_VALUE_LIMIT == validation.MAX_PARAM_VAL_LENGTH
    assert limits.PARAMS_PER_BATCH == validation.MAX_PARAMS_TAGS_PER_BATCH
    assert limits.METRICS_PER_BATCH == validation.MAX_METRICS_PER_BATCH


def test_importing_tracking_does_not_import_mlflow():
    code = "import sys, experiments.tracking; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_default_store_is_an_absolute_sqlite_file_in_the_output(tracked):
    assert tracked.tracker.uri == f"sqlite:///{tracked.output.resolve()}/mlflow.db"
    assert (tracked.output / "mlflow.db").is_file()
    experiment = tracked.client.get_experiment_by_name("tracking-test")
    assert experiment.artifact_location == str(tracked.output / "mlartifacts")


def test_a_new_store_is_a_copy_of_the_cached_template(tracked, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tracked.cache))
    template = tracking.template_path()
    assert template.parent == tracked.cache / "dipswarm" and template.is_file()
    tracker = Tracker(str(tmp_path / "other.db"), "second", tmp_path)
    tracker.start("p", {})
    with tracker.child("c", {"a": 1}) as child:
        child.log_metrics({"m": 2.0})
    tracker.finish()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracker.uri)
    assert client.get_run(child.run_id).data.metrics == {"m": 2.0}
    default = client.get_experiment("0")
    assert default.artifact_location == str(tmp_path.resolve() / "mlartifacts")
    assert client.get_experiment_by_name("tracking-test") is None  # nothing of the first store


def test_children_are_nested_under_the_parent(tracked):
    experiment_id = tracked.tracker.experiment_id
    children = tracked.client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{tracked.parent}'"
    )
    assert {run.info.run_id for run in children} == {tracked.good, tracked.bad}
    assert {run.info.run_name for run in children} == {"sr / daps", "sr / broken"}
    parent = tracked.client.get_run(tracked.parent)
    assert parent.info.run_name == "demo" and parent.info.status == "FINISHED"
    assert parent.data.tags["output"] == str(tracked.output)
    assert "mlflow.parentRunId" not in parent.data.tags


def test_params_are_flattened_with_dots_and_truncated(tracked):
    params = tracked.client.get_run(tracked.parent).data.params
    assert params["seed"] == "3"
    assert params["tracking.enabled"] == "True" and params["tracking.uri"] == "None"
    assert params["methods.daps.overrides.steps"] == "50"
    assert params["notes"] == "x" * search_tracking.PARAM_VALUE_LIMIT
    child = tracked.client.get_run(tracked.good).data.params
    assert child == {"task": "sr", "ensemble.particles": "4"}


def test_traces_are_metric_histories_without_missing_values(tracked):
    history = tracked.client.get_metric_history(tracked.good, "test_0003/loss_best")
    assert [(m.step, m.value) for m in history] == [(0, 3.0), (3, 1.5), (5, 0.5)]
    alive = tracked.client.get_metric_history(tracked.good, "test_0003/alive")
    assert [(m.step, m.value) for m in alive] == [(0, 4.0), (1, 4.0), (2, 3.0)]


def test_final_metrics_skip_non_finite_values(tracked):
    metrics = tracked.client.get_run(tracked.good).data.metrics
    assert metrics["psnr_mean"] == 21.5
    assert "lpips_mean" not in metrics
    parent = tracked.client.get_run(tracked.parent).data.metrics
    assert 0 < parent["tracking_seconds"] <= tracked.tracker.seconds


def test_images_and_artifacts_are_stored(tracked):
    def listed(run_id: str, path: str | None = None) -> set[str]:
        return {a.path for a in tracked.client.list_artifacts(run_id, path)}

    assert listed(tracked.good, "images") == {"images/test_0003.png", "images/renamed"}
    assert listed(tracked.good, "images/renamed") == {"images/renamed/grid.png"}
    assert listed(tracked.good, "extra") == {"extra/test_0003.png"}
    assert listed(tracked.parent) == {"results.csv"}
    local = tracked.client.download_artifacts(tracked.good, "images/test_0003.png")
    assert Path(local).read_bytes() == (tracked.output / "test_0003.png").read_bytes()
    assert (
        str(tracked.output / "mlartifacts")
        in tracked.client.get_run(tracked.good).info.artifact_uri
    )


def test_an_exception_in_a_child_marks_it_failed(tracked):
    bad = tracked.client.get_run(tracked.bad)
    assert bad.info.status == "FAILED"
    assert bad.data.metrics == {"started": 1.0}
    assert tracked.client.get_run(tracked.good).info.status == "FINISHED"


def test_ui_command_names_the_absolute_database(tracked):
    command = tracked.tracker.ui_command()
    assert command.startswith("mlflow ui --backend-store-uri sqlite:////")
    assert f"{tracked.output.resolve()}/mlflow.db" in command and "--port 5000" in command


def test_image_keys_may_not_leave_the_images_folder(tracked, tmp_path):
    child = tracking.ChildRun(tracked.client, tracked.good, tracking._Clock())
    with pytest.raises(ValueError, match="images/"):
        child.log_image(_png(tmp_path / "a.png"), "../escape")


def test_many_points_are_split_into_batches_of_the_mlflow_limit():
    calls: list[int] = []

    class Client:
        def log_batch(self, run_id, metrics=(), params=()):
            calls.append(len(metrics) + len(params))

    run = tracking.ChildRun(Client(), "run", tracking._Clock())
    run.log_traces({"a": list(range(1500)), "b": [1.0] * 600})
    run.log_params({f"p{i}": i for i in range(250)})
    assert calls == [1000, 1000, 100, 100, 100, 50]


def test_disabled_tracker_is_a_no_op_and_writes_nothing(tmp_path):
    tracker = Tracker("sqlite:///never.db", "x", tmp_path, enabled=False)
    assert tracker.start("run", CONFIG) == ""
    with tracker.child("c", {"a": 1}) as child:
        child.log_traces(TRACES)
        child.log_metrics({"a": 1.0})
        child.log_image(tmp_path / "missing.png", "k")
        child.log_artifact(tmp_path / "missing.txt")
    tracker.log_metrics({"a": 1.0})
    tracker.log_artifact(tmp_path / "missing.txt")
    tracker.finish()
    assert tracker.ui_command() == "" and tracker.seconds == 0.0
    assert list(tmp_path.iterdir()) == []


def test_child_before_start_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="start"):
        Tracker(None, "x", tmp_path).child("c", {})


def test_relative_uris_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    here = tmp_path.resolve()
    out = tmp_path / "out"
    assert resolve_tracking_uri(None, "out") == default_tracking_uri(out)
    assert default_tracking_uri("out") == f"sqlite:///{here}/out/mlflow.db"
    assert resolve_tracking_uri("sqlite:///runs/m.db", out) == f"sqlite:///{here}/runs/m.db"
    assert (
        resolve_tracking_uri("sqlite:////abs/m.db?timeout=9", out)
        == "sqlite:////abs/m.db?timeout=9"
    )
    assert resolve_tracking_uri("store.sqlite", out) == f"sqlite:///{here}/store.sqlite"
    assert resolve_tracking_uri("runs", out) == f"sqlite:///{here}/runs/mlflow.db"
    assert resolve_tracking_uri("file:./mlruns", out) == f"sqlite:///{here}/mlruns/mlflow.db"
    assert resolve_tracking_uri(f"file://{here}/mr", out) == f"sqlite:///{here}/mr/mlflow.db"


@pytest.mark.parametrize(
    "uri",
    ["http://127.0.0.1:5000", "https://mlflow.example.org", "databricks", "postgresql://h/db"],
)
def test_server_and_database_uris_are_kept(uri, tmp_path):
    assert resolve_tracking_uri(uri, tmp_path) == uri


def test_an_existing_file_store_is_refused_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    (tmp_path / "mlruns" / "0").mkdir(parents=True)
    (tmp_path / "mlruns" / "0" / "meta.yaml").write_text("name: Default\n")
    with pytest.raises(ValueError, match="migrate-filestore"):
        resolve_tracking_uri(str(tmp_path / "mlruns"), tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = resolve_tracking_uri(str(tmp_path / "mlruns"), tmp_path)
    assert uri == (tmp_path / "mlruns").resolve().as_uri()
    assert Tracker(uri, "x", tmp_path).ui_command().startswith("MLFLOW_ALLOW_FILE_STORE=true ")


def test_ui_command_of_a_tracking_server_opens_it(tmp_path):
    assert (
        Tracker("http://h:5000", "x", tmp_path).ui_command() == "python -m webbrowser http://h:5000"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, server: subprocess.Popen, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail if the server exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "the MLflow server exited"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the MLflow server did not answer {url} within {timeout} s")


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (mlflow starts uvicorn as a child), then KILL."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


@pytest.mark.slow
def test_the_mlflow_ui_server_lists_the_runs(tracked):
    """The store browses as ``ui_command`` says (the same flags; --workers 1 to start faster)."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    command = tracked.tracker.ui_command().replace("--port 5000", f"--port {port} --workers 1")
    args = [sys.executable, "-m", *shlex.split(command)]
    log = tracked.output / "server.log"
    with log.open("w") as sink:
        server = subprocess.Popen(
            args, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_for(f"{base}/health", server, timeout=180)
        found = _post(
            f"{base}/api/2.0/mlflow/runs/search",
            {"experiment_ids": [tracked.tracker.experiment_id]},
        )
        runs = {run["info"]["run_id"]: run["info"]["status"] for run in found["runs"]}
        assert runs == {tracked.parent: "FINISHED", tracked.good: "FINISHED", tracked.bad: "FAILED"}
        listing = f"{base}/api/2.0/mlflow/artifacts/list?run_id={tracked.good}&path=images"
        with urllib.request.urlopen(listing, timeout=30) as answer:
            files = {f["path"] for f in json.load(answer)["files"]}
        assert "images/test_0003.png" in files
        with urllib.request.urlopen(f"{base}/", timeout=30) as answer:
            assert answer.status == 200
            assert "text/html" in answer.headers["Content-Type"]
            assert b"<html" in answer.read().lower()
    finally:
        _stop(server)


def test_the_background_import_loads_the_sqlite_store_modules() -> None:
    code = (
        "import sys\n"
        "from experiments.tracking import import_in_background\n"
        "import_in_background().join()\n"
        "print('mlflow.store.tracking.sqlalchemy_store' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip() == "True"
