"""MLflow runs of a resumed ``dipswarm run`` (issue 18, items 9 and 10): the same parent and
children continue (their ids kept in OUTPUT/mlflow_runs.json), runs a killed process left
RUNNING are closed, every image's artifacts end up in the finished tree; the experiments are
tagged so that the MLflow 3 UI opens them on their runs, whose address the CLI prints."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from experiments import cli
from experiments.config import dump_config
from experiments.runner import run_experiment
from experiments.tracking import RUNS_FILE, Tracker
from search import tracking as search_tracking
from tests.digits_runs import daps_method, digits_config, result_rows

KIND = {"mlflow.experimentKind": "custom_model_development"}


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _status(client: Any, run_id: str) -> str:
    return client.get_run(run_id).info.status


# ---------------------------------------------------------------- Tracker (no solver)


def test_a_resumed_tracker_continues_the_recorded_parent_and_children(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    client = _client(uri)
    first = Tracker(uri, "resumed", tmp_path / "out")
    parent = first.start("run", {"data": {"images": 1}, "seed": 0})
    child = first.child("box / daps", {"method": "daps"})
    child.log_metrics({"psnr": 20.0})  # then the process dies: nothing ends
    recorded = json.loads((tmp_path / "out" / RUNS_FILE).read_text())
    assert recorded["parent"] == parent and recorded["children"] == {"box / daps": child.run_id}

    again = Tracker(uri, "resumed", tmp_path / "out")
    params = {"data": {"images": 2}, "seed": 0, "new": 1}  # MLflow params cannot change
    assert again.start("run", params, resume=True) == parent
    assert _status(client, parent) == "RUNNING"
    same = again.child("box / daps", {"method": "daps", "extra": 3})
    other = again.child("box / dps", {"method": "dps"})
    assert same.run_id == child.run_id and other.run_id != child.run_id
    assert _status(client, child.run_id) == "RUNNING"
    same.end()
    other.end()
    again.finish()
    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"data.images": "1", "seed": "0", "new": "1"}
    assert client.get_run(child.run_id).data.params == {"method": "daps", "extra": "3"}
    assert client.get_run(child.run_id).data.metrics == {"psnr": 20.0}
    assert _status(client, other.run_id) == "FINISHED"
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"
    )
    assert len(children) == 2 and len(client.search_runs([run.info.experiment_id])) == 3


def test_a_fresh_start_closes_the_runs_a_killed_process_left_running(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = _client(uri)
    killed = Tracker(uri, "fresh", tmp_path)
    parent = killed.start("run", {})
    child = killed.child("box / daps", {})
    done = killed.child("box / dps", {})
    done.end()
    fresh = Tracker(uri, "fresh", tmp_path)
    assert fresh.start("run", {}) != parent
    assert (_status(client, parent), _status(client, child.run_id)) == ("KILLED", "KILLED")
    assert _status(client, done.run_id) == "FINISHED"
    assert fresh.child("box / daps", {}).run_id != child.run_id  # not continued


def test_experiments_open_on_their_runs_and_the_runs_url_names_them(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert Tracker(uri, "kind", tmp_path).runs_url() == ""  # no store yet: none is created
    assert not (tmp_path / "mlflow.db").exists()
    client = _client(uri)
    tracker = Tracker(uri, "kind", tmp_path)
    tracker.start("run", {})
    experiment = client.get_experiment(tracker.experiment_id)
    assert experiment.tags.items() >= KIND.items()
    url = f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs"
    assert tracker.runs_url() == url and Tracker(uri, "kind", tmp_path).runs_url() == url
    # an experiment made elsewhere is marked when dipswarm uses it; a kind set by a user stays
    plain = client.create_experiment("plain")
    Tracker(uri, "plain", tmp_path / "p").start("run", {})
    assert client.get_experiment(plain).tags.items() >= KIND.items()
    user = client.create_experiment("user", tags={"mlflow.experimentKind": "genai_development"})
    Tracker(uri, "user", tmp_path / "u").start("run", {})
    assert client.get_experiment(user).tags["mlflow.experimentKind"] == "genai_development"
    # a study's experiment (search.tracking) too
    experiment_id, _ = search_tracking.open_parent(uri, "study", "s", {}, tmp_path / "art")
    assert client.get_experiment(experiment_id).tags.items() >= KIND.items()
    server = Tracker("http://mlflow.example:5000/", "kind", tmp_path)
    server.experiment_id = "7"
    assert server.runs_url() == "http://mlflow.example:5000/#/experiments/7/runs"


# ---------------------------------------------------------------- dipswarm run


def _config(tmp_path: Path, uri: str) -> Path:
    config = digits_config(
        "resumed", tmp_path / "out", 2, [daps_method()], [],
        tracking={"experiment": "resumed", "uri": uri}, metrics={"lpips": False},
    )  # fmt: skip
    path = tmp_path / "config.yaml"
    dump_config(config, path)
    return path


KILL_AFTER_FIRST_IMAGE = """
import os, signal, sys
from experiments.config import load_config
from experiments.runner import run_experiment
run_experiment(load_config(sys.argv[1]), progress=False,
               on_image=lambda row: os.kill(os.getpid(), signal.SIGKILL))
"""


def _check_one_finished_tree(uri: str, output: Path) -> tuple[str, Any]:
    """The experiment holds one parent and one child, both FINISHED, the child with the grid of
    every image; returns the experiment id and the child run."""
    client = _client(uri)
    experiment = client.get_experiment_by_name("resumed")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    recorded = json.loads((output / RUNS_FILE).read_text())
    child = client.get_run(recorded["children"]["box / daps"])
    assert child.data.tags["mlflow.parentRunId"] == recorded["parent"]
    images = sorted(a.path for a in client.list_artifacts(child.info.run_id, "images"))
    assert images == sorted(f"images/{row['image']}.png" for row in result_rows(output))
    assert len(images) == 2
    return experiment.experiment_id, child


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_into_the_same_runs(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = _config(tmp_path, uri)
    output = tmp_path / "out"
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_FIRST_IMAGE, str(path)], capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert [row["status"] for row in result_rows(output)] == ["ok"]
    before = json.loads((output / RUNS_FILE).read_text())
    assert _status(_client(uri), before["parent"]) == "RUNNING"  # left so by the kill
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["run", str(path), "--resume", "--no-progress"]) == 0
    assert json.loads((output / RUNS_FILE).read_text()) == before  # same parent and child
    experiment_id, child = _check_one_finished_tree(uri, output)
    assert child.info.run_id == before["children"]["box / daps"]
    assert child.data.metrics["psnr_mean"] == pytest.approx(
        sum(float(row["psnr"]) for row in result_rows(output)) / 2
    )
    url = f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"
    assert f"runs:     {url}" in printed.getvalue()


@pytest.mark.slow
def test_a_run_stopped_with_ctrl_c_ends_killed_and_resumes_into_the_same_runs(
    tmp_path: Path,
) -> None:
    from experiments.config import load_config

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = load_config(_config(tmp_path, uri))
    output = tmp_path / "out"

    def interrupt(row: dict[str, Any]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, progress=False, on_image=interrupt)
    before = json.loads((output / RUNS_FILE).read_text())
    client = _client(uri)
    assert _status(client, before["parent"]) == "KILLED"
    assert _status(client, before["children"]["box / daps"]) == "KILLED"
    run_experiment(config, resume=True, progress=False)
    assert json.loads((output / RUNS_FILE).read_text()) == before
    _check_one_finished_tree(uri, output)
