"""``dipswarm tune --resume`` after the study's driver was killed with SIGKILL (issue 18, item 2).

A tiny GMM study runs in a subprocess (its own local Ray) and is killed as soon as Optuna's
journal records the first finished trial, before Tune's periodic snapshot of the experiment can
know of it; the study is then resumed in this process on the session's Ray instance.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from experiments import cli

TRIALS = 3
TINY = [
    f"search.num_samples={TRIALS}", "search.asha=null", "gmm.instances=1", "gmm.particles=20",
    "gmm.reference_samples=50", "methods.daps_hmc.overrides.annealing_steps=4",
]  # fmt: skip
COMPLETE = 1  # optuna.trial.TrialState.COMPLETE in the journal's records


def _finished_in_journal(journal: Path) -> dict[int, float]:
    """Optuna trial id -> value of the trials the journal records as COMPLETE."""
    if not journal.exists():
        return {}
    finished = {}
    for line in journal.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if record.get("op_code") == 6 and record.get("state") == COMPLETE:
            finished[record["trial_id"]] = record["values"][0]
    return finished


def _kill_after_first_trial(output: Path) -> dict[int, float]:
    """Run the study in a subprocess and SIGKILL it once a trial finished; what the journal
    held then."""
    argv = [sys.executable, "-m", "experiments.cli", "tune", "tune_gmm", f"output={output}"]
    log = output.parent / "killed.log"
    with open(log, "w") as sink:
        driver = subprocess.Popen(
            [*argv, *TINY, "--no-progress"], stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True, env={**os.environ, "RAY_ADDRESS": ""},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 240
            while not (finished := _finished_in_journal(output / "optuna.journal")):
                assert driver.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "no trial finished in time"
                time.sleep(0.05)
            os.kill(driver.pid, signal.SIGKILL)
            driver.wait(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):  # its Ray processes, if any are left
                os.killpg(driver.pid, signal.SIGKILL)
    return finished


@pytest.mark.ray
@pytest.mark.slow
def test_a_study_killed_with_sigkill_resumes_keeping_its_finished_trials(
    ray_session: Any, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    output = tmp_path / "out"
    before = _kill_after_first_trial(output)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["tune", "tune_gmm", f"output={output}", *TINY, "--resume"]) == 0
    study_dir = output / "tune_gmm"
    trials = pd.read_csv(study_dir / "trials.csv")
    completed = trials[trials["status"] == "completed"]
    assert len(completed) == TRIALS and "INTERRUPTED" not in printed.getvalue()
    # Any other row is a trial that Optuna had started but Tune's state did not hold yet.
    others = trials[trials["status"] != "completed"]
    assert set(others["status"]) <= {"failed"}
    assert all("cut off" in error for error in others["error"])
    meta = json.loads((study_dir / "search_study.json").read_text())
    import optuna

    from search.study import _journal

    study = optuna.load_study(
        study_name=meta["study_name"], storage=_journal(output / "optuna.journal")
    )
    states = {t._trial_id: t.state for t in study.trials}
    assert optuna.trial.TrialState.RUNNING not in states.values()
    for trial_id, value in before.items():  # what was finished before the kill is kept
        kept = study.trials[[t._trial_id for t in study.trials].index(trial_id)]
        assert kept.state == optuna.trial.TrialState.COMPLETE and kept.value == value
        row = trials[trials["number"] == kept.number]
        assert list(row["status"]) == ["completed"]
        assert row["sliced_wasserstein"].item() == pytest.approx(value, rel=1e-9)
    url = f"http://127.0.0.1:5000/#/experiments/{meta['mlflow_experiment_id']}/runs"
    assert f"runs:      {url}" in printed.getvalue()  # item 10: the study's runs page
    client = MlflowClient(meta["mlflow_uri"])
    parent = client.get_run(meta["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    runs = client.search_runs([parent.info.experiment_id])
    assert "RUNNING" not in {run.info.status for run in runs}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    finished = sorted(
        r.data.tags["search.trial_id"] for r in children if r.info.status == "FINISHED"
    )
    assert finished == sorted(completed["trial_id"])


def test_a_restored_searcher_keeps_finished_trials_and_fails_lost_ones(tmp_path: Path) -> None:
    """Tune saved the searcher while trial "a" ran; then "a" finished and "b" and "c" were asked
    for ("c" finished too) before the driver died: the journal is ahead of Tune's save."""
    import optuna

    import search
    from search import backend
    from search.objective import FINAL_KEY
    from search.space import DefineByRun
    from search.study import _journal, _journal_row

    space = {"x": search.Float(0.0, 1.0), "width": search.Fixed(8)}
    settings = {"metric": "loss", "step_key": "step"}

    def searcher() -> backend.Searcher:
        return backend.Searcher(
            space=DefineByRun(space), metric="loss", mode="min", sampler=None,
            study_name="lost", storage=_journal(tmp_path / "optuna.journal"), step_key="step",
        )  # fmt: skip

    first = searcher()
    first.suggest("a")
    saved = tmp_path / "searcher.pkl"
    first.save(str(saved))
    first.on_trial_result("a", {"loss": 0.5, "step": 1})
    first.on_trial_complete("a", {"loss": 0.25, "step": 1, FINAL_KEY: True})
    first.suggest("b")
    first.suggest("c")
    first.on_trial_result("c", {"loss": 0.75, "step": 1})
    first.on_trial_result("c", {"loss": 0.5, "step": 2})
    first.on_trial_complete("c", {"loss": 0.125, "step": 2, FINAL_KEY: True})

    restored = searcher()
    restored.restore(str(saved))
    # Tune runs "a" again: Optuna's record of it stands, the re-run is not sent
    restored.on_trial_result("a", {"loss": 9.0, "step": 1})
    restored.on_trial_complete("a", {"loss": 9.0, "step": 1, FINAL_KEY: True})
    study = optuna.load_study(study_name="lost", storage=_journal(tmp_path / "optuna.journal"))
    a, b, c = study.trials
    assert (a.state.name, a.value, a.intermediate_values) == ("COMPLETE", 0.25, {1: 0.5})
    assert b.state.name == "FAIL" and b.user_attrs[backend.CUT_OFF_ATTR] == backend.CUT_OFF
    assert (c.state.name, c.value) == ("COMPLETE", 0.125)
    row, config = _journal_row(b, space, settings)
    assert row["status"] == "failed" and math.isnan(row["loss"]) and row["error"] == backend.CUT_OFF
    assert row["trial_id"] == "b" and row["steps"] == 0 and config["width"] == 8
    row, config = _journal_row(c, space, settings)
    assert (row["trial_id"], row["number"], row["status"], row["loss"], row["steps"]) == (
        "c", 2, "completed", 0.125, 2,
    )  # fmt: skip
    assert config == {"x": c.params["x"], "width": 8} and row["config/x"] == c.params["x"]


def test_a_resumed_study_ends_the_runs_a_killed_driver_left_and_logs_no_trial_twice(
    tmp_path: Path,
) -> None:
    import pickle
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from search import backend
    from search import tracking as search_tracking
    from search.objective import FINAL_KEY

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id, parent = search_tracking.open_parent(uri, "s", "s-1", {}, tmp_path / "art")
    callback = backend.MLflowTrials(uri, experiment_id, parent, "step")
    final = {"loss": 1.0, "step": 1, FINAL_KEY: True}
    trials = {
        name: SimpleNamespace(trial_id=name, config={"x": 0.5}, last_result=final)
        for name in ("done", "cut", "lost")
    }
    for trial in trials.values():
        callback.on_trial_start(0, [], trial)
    callback.on_trial_result(0, [], trials["done"], final)
    callback.on_trial_complete(0, [], trials["done"])
    # the driver is killed: "cut" and "lost" stay RUNNING, though Optuna finished "lost"
    search_tracking.reopen_parent(uri, parent, {"done": "completed", "lost": "completed"})
    client = MlflowClient(uri)

    def children() -> dict[str, list[Any]]:
        runs = client.search_runs(
            [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"
        )
        found: dict[str, list[Any]] = {}
        for run in runs:
            found.setdefault(run.data.tags["search.trial_id"], []).append(run)
        return found

    ended = {name: [(r.info.status, r.data.tags["search.status"]) for r in runs]
             for name, runs in children().items()}  # fmt: skip
    assert ended == {
        "done": [("FINISHED", "completed")],
        "cut": [("KILLED", "running")],
        "lost": [("FINISHED", "completed")],
    }
    assert client.get_run(parent).info.status == "RUNNING"
    restored = pickle.loads(pickle.dumps(callback))  # as Tune restores it
    for name in ("done", "cut"):  # Tune runs both again: "done" finished after its last save
        restored.on_trial_start(0, [], trials[name])
        restored.on_trial_result(0, [], trials[name], {**final, "loss": 9.0})
        restored.on_trial_complete(0, [], trials[name])
    runs = children()
    assert len(runs["done"]) == 1 and runs["done"][0].data.metrics["loss"] == 1.0
    assert sorted(r.info.status for r in runs["cut"]) == ["FINISHED", "KILLED"]
