"""search: spaces, the objective contract, and studies on a cheap synthetic objective.

The studies run on the shared Ray instance (``ray_session``) with a noisy 2-D quadratic whose
optimum is at (0.5, -0.3); trials at x = 2 raise and trials at x = -2 report NaN (exact bounds,
which random sampling never hits), so that failures are deterministic.
"""

from __future__ import annotations

import functools
import math
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import search
from search.objective import FAILED_KEY, FINAL_KEY, TRACEBACK_KEY, ObjectiveError, Reporter

OPTIMUM = (0.5, -0.3)
STEPS = 6
START = {"x": -1.5, "y": 1.5}


@dataclass(frozen=True)
class DeclaredRange:
    """Stands in for solvers.config.Range (search must not import solvers)."""

    low: float
    high: float
    log: bool = False


def quadratic(config: dict[str, Any]) -> float:
    return (config["x"] - OPTIMUM[0]) ** 2 + (config["y"] - OPTIMUM[1]) ** 2


def noisy_quadratic(config: dict[str, Any], report: search.Report) -> dict[str, float]:
    """Converges to the quadratic over STEPS reports, with config-seeded noise; the start
    point's trial also checks that an actor it starts lands in its placement group."""
    if config["x"] == 2.0:
        raise RuntimeError("objective exploded")
    noise = random.Random(f"{config['x']:.6f}{config['y']:.6f}")
    for k in range(1, STEPS + 1):
        value = math.nan if config["x"] == -2.0 and k == 2 else quadratic(config)
        report({"loss": value + (1.0 + 0.1 * noise.random()) / k, "width": config["width"]})
    final = {"loss": quadratic(config), "distance": math.sqrt(quadratic(config))}
    if config["x"] == START["x"] and config["y"] == START["y"]:
        final["same_group"] = float(child_actor_group() == current_group())
    return final


def child_actor_group() -> str | None:
    """The placement group of an actor started by the trial (it needs the trial's 2nd bundle)."""
    import ray

    @ray.remote(num_cpus=0.5)
    class Particle:
        def group(self) -> str | None:
            return current_group()

    particle = Particle.remote()
    try:
        return ray.get(particle.group.remote(), timeout=120)
    finally:
        ray.kill(particle)


def current_group() -> str | None:
    import ray

    group = ray.util.get_current_placement_group()
    return group.id.hex() if group else None


def interrupting_quadratic(
    config: dict[str, Any], report: search.Report, driver: int, folder: str
) -> dict[str, float]:
    """The quadratic, logging each finish; the 3rd trial stops the study like Ctrl-C would."""
    from ray import tune

    finished = Path(folder, "finished.log")
    done = finished.read_text().split() if finished.exists() else []
    if len(done) >= 2 and driver:
        try:
            os.close(os.open(Path(folder, "interrupted"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        else:
            os.kill(driver, signal.SIGUSR1)  # Tune's graceful stop (as SIGINT), state saved
            time.sleep(60)
    for k in range(1, 4):
        report({"loss": quadratic(config) + 1.0 / k})
    with open(finished, "a") as log:
        log.write(tune.get_context().get_trial_id() + "\n")
    return {"loss": quadratic(config)}


def _space() -> dict[str, search.Dimension]:
    declared = {"x": DeclaredRange(-2.0, 2.0), "y": (-2.0, 2.0), "width": (1, 64, True)}
    return search.space_from_ranges(declared, fix={"width": 8}, integers={"width"})


# ---------------------------------------------------------------- spaces (no Ray)


def test_space_from_ranges_reads_ranges_tuples_and_options() -> None:
    space = search.space_from_ranges(
        {
            "lr": DeclaredRange(1e-4, 1e-1, log=True),
            "sigma": (0.1, 2.0),
            "steps": (10, 1000, True),
            "kind": ("ula", "hmc"),
            "given": search.Categorical((1, 2)),
        },
        integers={"steps"},
    )
    assert space == {
        "lr": search.Float(1e-4, 1e-1, log=True),
        "sigma": search.Float(0.1, 2.0),
        "steps": search.Int(10, 1000, log=True),
        "kind": search.Categorical(("ula", "hmc")),
        "given": search.Categorical((1, 2)),
    }


def test_fixing_and_narrowing_fields() -> None:
    declared = {"lr": DeclaredRange(1e-4, 1e-1, log=True), "steps": (10, 100), "kind": ("a", "b")}
    space = search.space_from_ranges(
        declared, fix={"kind": "b"}, narrow={"lr": (1e-3, 1e-2), "steps": (20, 30)},
        integers={"steps"},
    )  # fmt: skip
    assert space["kind"] == search.Fixed("b")
    assert space["lr"] == search.Float(1e-3, 1e-2, log=True)  # keeps the declared log scale
    assert space["steps"] == search.Int(20, 30)
    narrowed = search.space_from_ranges(
        declared, narrow={"kind": ("a",), "lr": (1e-3, 1e-2, False)}
    )
    assert narrowed["kind"] == search.Categorical(("a",)) and not narrowed["lr"].log


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"narrow": {"lr": (1e-5, 1e-2)}}, r"cannot narrow lr to \[1e-05, 0.01\]: outside its "
         r"declared range \[0.0001, 0.1\] \(log\)"),
        ({"narrow": {"steps": (5, 50)}}, r"cannot narrow steps .*\[10, 100\]"),
        ({"narrow": {"kind": ("c",)}}, r"cannot narrow kind .*'c'.* one of 'a', 'b'"),
        ({"fix": {"lr": 1.0}}, r"cannot fix lr = 1.0: outside its declared range \[0.0001, 0.1\]"),
        ({"fix": {"kind": "c"}}, r"cannot fix kind = 'c'"),
        ({"fix": {"nope": 1}}, r"fix: unknown field\(s\) nope; declared: kind, lr, steps"),
        ({"narrow": {"nope": (1, 2)}}, r"narrow: unknown field\(s\) nope"),
        ({"fix": {"lr": 0.01}, "narrow": {"lr": (1e-3, 1e-2)}}, r"lr are both fixed and narrowed"),
        ({"narrow": {"lr": (0.01, 0.001)}}, r"field lr: low must not exceed high"),
        ({"narrow": {"steps": (10.5, 20)}}, r"field steps: Int bounds must be integers"),
    ],
)  # fmt: skip
def test_bad_edits_name_the_field_and_its_range(edit: dict, message: str) -> None:
    declared = {"lr": DeclaredRange(1e-4, 1e-1, log=True), "steps": (10, 100), "kind": ("a", "b")}
    with pytest.raises(search.SpaceError, match=message):
        search.space_from_ranges(declared, integers={"steps"}, **edit)


@pytest.mark.parametrize(
    ("ranges", "message"),
    [
        ({"lr": (0.0, 1.0, True)}, r"field lr: a log-scale range needs low > 0"),
        ({"lr": object()}, r"field lr: cannot read a range"),
        ({"lr": (math.nan, 1.0)}, r"field lr: bounds must be finite"),
        ({"kind": ([1],)}, r"field kind: Categorical choices must be"),
    ],
)
def test_bad_declarations_are_reported(ranges: dict, message: str) -> None:
    with pytest.raises(search.SpaceError, match=message):
        search.space_from_ranges(ranges)


def test_define_by_run_samples_in_range_and_passes_fixed_values() -> None:
    import optuna

    space = {**_space(), "kind": search.Categorical(("a", "b")), "n": search.Int(2, 5)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        constants = search.DefineByRun(space)(trial)
        assert constants == {"width": 8}
        assert -2 <= trial.params["x"] <= 2 and trial.params["kind"] in ("a", "b")
        assert isinstance(trial.params["n"], int) and 2 <= trial.params["n"] <= 5
        study.tell(trial, 0.0)


def test_points_are_checked_and_lose_their_fixed_values() -> None:
    space = _space()
    assert search.validate_point(space, {"x": 1.0, "width": 8}) == {"x": 1.0}
    with pytest.raises(search.SpaceError, match=r"x = 3.0 is outside \[-2, 2\]"):
        search.validate_point(space, {"x": 3.0})
    with pytest.raises(search.SpaceError, match="width = 4 is outside fixed at 8"):
        search.validate_point(space, {"width": 4})
    with pytest.raises(search.SpaceError, match="unknown field"):
        search.validate_point(space, {"z": 0.0})


# ---------------------------------------------------------------- the objective contract


def test_reporter_counts_steps_and_marks_the_final_result() -> None:
    sent: list[dict] = []
    reporter = Reporter("loss", "step", sent.append)
    reporter({"loss": 3.0})
    reporter({"loss": 2.0, "step": 5, "other": 1})
    final = reporter.finish({"loss": 1.5, "psnr": 20.0})
    assert [r["step"] for r in sent] == [1, 5, 5]
    assert final == {"loss": 1.5, "step": 5, "other": 1, "psnr": 20.0, FINAL_KEY: True}
    lone = Reporter("loss", "step", sent.append)
    assert lone.finish({"loss": 1.0}) == {"step": 1, "loss": 1.0, FINAL_KEY: True}


def test_reporter_reports_a_failure_at_the_last_step_reached() -> None:
    sent: list[dict] = []
    reporter = Reporter("loss", "step", sent.append)
    reporter({"loss": 3.0, "step": 4})
    try:
        raise ValueError("diverged\nsecond line")
    except ValueError as error:
        failure = reporter.fail(error)
    assert failure["step"] == 4 and math.isnan(failure["loss"])
    assert failure[FAILED_KEY] == "ValueError: diverged"
    assert "Traceback" in failure[TRACEBACK_KEY] and "second line" in failure[TRACEBACK_KEY]
    assert Reporter("loss", "step", sent.append).fail(KeyError())[FAILED_KEY] == "KeyError"


@pytest.mark.parametrize(
    ("reports", "returned", "message"),
    [
        ([{"loss": math.nan}], None, r"'loss' = nan at step 1: the trial is recorded as failed"),
        ([{"loss": 1.0}], {"loss": math.inf}, r"'loss' = inf at step 1"),
        ([{"other": 1.0}], None, r"report at step 1 has no 'loss' \(keys: other, step\)"),
        ([{"loss": "high"}], None, r"'loss' = 'high'"),
        ([{"loss": 1.0, "step": 1.5}], None, r"'step' must be an integer"),
        ([], None, r"reported nothing and returned no 'loss'"),
        ([], 3.0, r"must return a dict or None"),
    ],
)
def test_reporter_rejects_broken_reports(reports: list, returned: Any, message: str) -> None:
    reporter = Reporter("loss", "step", lambda result: None)
    with pytest.raises(ObjectiveError, match=message):
        for metrics in reports:
            reporter(metrics)
        reporter.finish(returned)


def test_importing_search_stays_light() -> None:
    code = (
        "import sys, search; print(','.join(m for m in ('ray', 'optuna', 'mlflow', 'pandas', "
        "'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_every_named_sampler_proposes_points_in_the_space() -> None:
    import optuna

    from search.backend import SAMPLERS, make_sampler

    for name in SAMPLERS:
        study = optuna.create_study(sampler=make_sampler(name, seed=0))
        for _ in range(3):
            trial = study.ask()
            x = trial.suggest_float("x", -2.0, 3.0)
            study.tell(trial, (x - 1) ** 2)
        assert all(-2.0 <= t.params["x"] <= 3.0 for t in study.trials)
    with pytest.raises(ValueError, match="sampler"):
        make_sampler("annealing", seed=0)


# ---------------------------------------------------------------- studies (Ray)


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MLflow store for the module's studies (creating a SQLite store costs seconds)."""
    return tmp_path_factory.mktemp("mlflow") / "mlflow.db"


@pytest.fixture(scope="module")
def study(
    ray_session: Any, tmp_path_factory: pytest.TempPathFactory, mlflow_db: Path
) -> search.StudyResult:
    """One study: ASHA, 2 concurrent trials with a placement group each, a start point, a
    raising and a NaN trial, MLflow."""
    folder = tmp_path_factory.mktemp("study")
    return search.tune(
        noisy_quadratic,
        _space(),
        "loss",
        "min",
        num_samples=8,
        name="quadratic",
        storage_dir=folder,
        asha={"max_t": STEPS, "grace_period": 1, "reduction_factor": 3},
        max_concurrent=2,
        points_to_evaluate=[START, {"x": 2.0, "y": 0.0}, {"x": -2.0, "y": 0.0}],
        mlflow_uri=mlflow_db,
        resources=[{"CPU": 0.5}, {"CPU": 0.5}],  # the trial, and an actor it starts
        seed=3,
    )


@pytest.mark.ray
@pytest.mark.slow
def test_study_beats_its_starting_point(study: search.StudyResult) -> None:
    table = study.trials
    start = table[(table["config/x"] == START["x"]) & (table["config/y"] == START["y"])]
    assert len(table) == 8 and not study.interrupted
    assert study.best_value < float(start["loss"].iloc[0])
    assert study.best_value == pytest.approx(quadratic(study.best_config))
    assert math.dist((study.best_config["x"], study.best_config["y"]), OPTIMUM) < math.dist(
        (START["x"], START["y"]), OPTIMUM
    )
    assert study.best_config["width"] == 8  # fixed values reach the objective and the result
    assert study.best_value == table.loc[table["status"] == "completed", "loss"].min()


@pytest.mark.ray
@pytest.mark.slow
def test_asha_stops_poor_trials_early(study: search.StudyResult) -> None:
    table = study.trials
    stopped = table[table["status"] == "stopped"]
    assert len(stopped) >= 1 and (stopped["steps"] < STEPS).all()
    assert (table.loc[table["status"] == "completed", "steps"] == STEPS).all()
    assert study.total_steps < len(table) * STEPS
    states = {t.user_attrs["tune_trial_id"]: t.state.name for t in study.optuna_study().trials}
    assert {states[i] for i in stopped["trial_id"]} == {"PRUNED"}


@pytest.mark.ray
@pytest.mark.slow
def test_raising_and_nan_trials_fail_without_stopping_the_study(
    study: search.StudyResult,
) -> None:
    table = study.trials.set_index("config/x")
    assert table.at[2.0, "status"] == "failed"
    assert table.at[2.0, "error"] == "RuntimeError: objective exploded"
    assert table.at[-2.0, "status"] == "failed"
    assert "'loss' = nan at step 2" in table.at[-2.0, "error"]
    assert math.isnan(table.at[-2.0, "loss"])
    others = table.drop(index=[2.0, -2.0])
    assert set(others["status"]) <= {"completed", "stopped"} and len(others) == 6
    states = {t.user_attrs["tune_trial_id"]: t.state.name for t in study.optuna_study().trials}
    assert states[table.at[2.0, "trial_id"]] == states[table.at[-2.0, "trial_id"]] == "FAIL"
    assert "RUNNING" not in states.values()


@pytest.mark.ray
@pytest.mark.slow
def test_mlflow_has_a_parent_run_and_one_child_per_trial(
    study: search.StudyResult, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(study.mlflow_uri)
    parent = client.get_run(study.mlflow_parent_run_id)
    assert parent.data.metrics["best_loss"] == pytest.approx(study.best_value)
    assert parent.data.params["metric"] == "loss" and "space.x" in parent.data.params
    by_trial = {run.data.tags["search.trial_id"]: run for run in _children(study)}
    assert sorted(by_trial) == sorted(study.trials["trial_id"])
    for _, row in study.trials.iterrows():
        run = by_trial[row["trial_id"]]
        assert run.data.tags["search.status"] == row["status"]
        assert float(run.data.params["x"]) == row["config/x"] and run.data.params["width"] == "8"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        if row["status"] == "completed":
            assert run.info.status == "FINISHED" and steps == [*range(1, STEPS + 1), STEPS]
            assert run.data.metrics["loss"] == pytest.approx(row["loss"])
        elif row["status"] == "stopped":
            assert run.info.status == "FINISHED" and steps == list(range(1, row["steps"] + 1))
        else:
            assert run.info.status == "FAILED" and run.data.tags["search.error"] == row["error"]
            trace = client.download_artifacts(run.info.run_id, "error.txt", str(tmp_path))
            assert "Traceback" in Path(trace).read_text()


@pytest.mark.ray
@pytest.mark.slow
def test_best_config_yaml_round_trips(study: search.StudyResult, tmp_path: Path) -> None:
    path = search.save_best_yaml(study, tmp_path / "best.yaml", extra={"solver": "daps"})
    text = path.read_text()
    assert text.startswith(f"# best config of study {study.study_name}: loss = ")
    assert yaml.safe_load(text) == {"solver": "daps", **study.best_config}
    with pytest.raises(ValueError, match="clash"):
        search.save_best_yaml(study, tmp_path / "bad.yaml", extra={"x": 0})


@pytest.mark.ray
@pytest.mark.slow
def test_study_storage_is_named_uniquely_and_opens_in_the_dashboard(
    study: search.StudyResult,
) -> None:
    assert study.study_name.startswith("quadratic-") and len(study.study_name) == 18
    assert study.optuna_journal.is_file() and study.optuna_journal.is_absolute()
    assert search.optuna_dashboard_command(study) == f"optuna-dashboard {study.optuna_journal}"
    with pytest.raises(FileExistsError, match="resume=True"):
        search.tune(
            noisy_quadratic, _space(), "loss", "min", 8, name="quadratic",
            storage_dir=study.experiment_path.parent,
        )  # fmt: skip


@pytest.mark.ray
@pytest.mark.slow
def test_an_interrupted_study_resumes_without_losing_or_repeating_trials(
    ray_session: Any, tmp_path: Path, mlflow_db: Path
) -> None:
    run = functools.partial(
        search.tune, space=_space(), metric="loss", mode="min", num_samples=5, name="resumed",
        storage_dir=tmp_path, mlflow_uri=mlflow_db, seed=1,
    )  # fmt: skip
    objective = functools.partial(interrupting_quadratic, driver=os.getpid(), folder=str(tmp_path))
    first = run(objective)
    assert first.interrupted and (tmp_path / "interrupted").exists()
    kept = first.trials[first.trials["status"] == "completed"].set_index("trial_id")
    assert len(kept) == 2 and "unfinished" in set(first.trials["status"])
    plain = functools.partial(interrupting_quadratic, driver=0, folder=str(tmp_path))
    second = run(plain, resume=True)
    assert not second.interrupted and second.study_name == first.study_name
    table = second.trials.set_index("trial_id")
    assert len(table) == 5 and set(table["status"]) == {"completed"}
    assert set(kept.index) <= set(table.index)
    for column in ("loss", "config/x", "config/y"):
        assert (table.loc[kept.index, column] == kept[column]).all()
    finished = (tmp_path / "finished.log").read_text().split()
    assert sorted(finished) == sorted(table.index)  # every trial ran to its end exactly once
    optuna_trials = second.optuna_study().trials
    assert [t.state.name for t in optuna_trials] == ["COMPLETE"] * 5
    assert len({(t.params["x"], t.params["y"]) for t in optuna_trials}) == 5
    runs = _children(second)
    assert sorted(r.data.tags["search.trial_id"] for r in runs if r.info.status == "FINISHED") == (
        sorted(table.index)
    )
    cut = first.trials.loc[first.trials["status"] == "unfinished", "trial_id"]
    assert sorted(r.data.tags["search.trial_id"] for r in runs if r.info.status == "KILLED") == (
        sorted(cut)
    )


def _children(result: search.StudyResult) -> list[Any]:
    """The MLflow child runs of a study, after checking that its parent run is finished."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(result.mlflow_uri)
    parent = client.get_run(result.mlflow_parent_run_id)
    assert parent.info.status == "FINISHED"
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{result.mlflow_parent_run_id}'",
    )


@pytest.mark.ray
@pytest.mark.slow
def test_trial_actors_run_inside_the_trial_placement_group(study: search.StudyResult) -> None:
    start = study.trials[study.trials["config/x"] == START["x"]]
    assert list(start["status"]) == ["completed"] and list(start["same_group"]) == [1.0]


@pytest.mark.ray
@pytest.mark.slow
def test_resuming_a_finished_study_runs_no_trial_again(study: search.StudyResult) -> None:
    again = search.tune(
        noisy_quadratic, _space(), "loss", "min", 8, name="quadratic",
        storage_dir=study.experiment_path.parent, resume=True,
    )  # fmt: skip
    assert again.study_name == study.study_name and not again.interrupted
    columns = ["trial_id", "status", "loss", "steps"]
    assert again.trials[columns].equals(study.trials[columns])
    assert len(again.optuna_study().trials) == 8
