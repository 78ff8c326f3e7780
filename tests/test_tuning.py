"""Studies of experiment methods: tune configs, spaces, objectives, and ``dipswarm tune`` end to
end on the shipped digit prior with the local Ray (a tiny budget: 3 trials x 2 images x 2 steps).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

import search
import solvers
from experiments import cli, report
from experiments.best_preset import best_document
from experiments.config import ConfigError, load_config
from experiments.objectives import GMMObjective, score_gmm
from experiments.tune_config import GMMConfig, load_tune_config, tune_config_from_dict

CONFIGS = Path(cli.__file__).resolve().parent / "configs"
SHIPPED = CONFIGS / "tune_daps_digits.yaml"
TINY = {"annealing_steps": 2, "mcmc_steps": 1, "ode_steps": 1}
TINY_OVERRIDES = [f"methods.daps_hmc.overrides.{k}={v}" for k, v in TINY.items()]
TRIALS = 3
IMAGES = 2


def _shipped(*overrides: str):
    return load_tune_config(SHIPPED, list(overrides))


# ---------------------------------------------------------------- configs and spaces (no Ray)


@pytest.mark.parametrize("split", ["test", "all", "train"])
def test_only_the_validation_split_is_accepted(split: str) -> None:
    with pytest.raises(ConfigError, match=rf"data.split = '{split}'.*validation split only"):
        _shipped(f"data.split={split}")


def test_the_cli_refuses_the_test_split_with_a_clear_message() -> None:
    with pytest.raises(SystemExit, match=r"dipswarm tune: data.split = 'test'"):
        cli.main(["tune", "tune_daps_digits", "data.split=test"])


def test_the_space_is_every_declared_numeric_field_minus_the_fixed_ones() -> None:
    config = _shipped("search.fields=null", "search.narrow={}", "search.fix.sigma_max=20.0")
    declared = solvers.solver_class("daps").config_class.search_space()
    numeric = {name for name, spec in declared.items() if not isinstance(spec, tuple)}
    searched = {k for k, d in config.space.items() if not isinstance(d, search.Fixed)}
    assert searched == numeric - {"sigma_max"}
    assert config.space["sigma_max"] == search.Fixed(20.0)
    lr = declared["lr"]
    assert config.space["lr"] == search.Float(lr.low, lr.high, log=True)
    assert config.space["annealing_steps"] == search.Int(1, 5000)  # int fields stay integers


def test_fields_fix_and_narrow_shape_the_space_from_the_command_line() -> None:
    config = _shipped(
        "search.fields=[lr,momentum,mcmc]", "search.fix.momentum=0.5", "search.narrow={}",
        "search.narrow.lr=[1e-5,1e-3]", "search.narrow.mcmc=[hmc]",
    )  # fmt: skip
    assert config.space == {
        "mcmc": search.Categorical(("hmc",)),
        "lr": search.Float(1e-5, 1e-3, log=True),  # "1e-5" (a YAML string) read as a number
        "momentum": search.Fixed(0.5),
    }
    assert config.points() == [{"mcmc": "hmc", "lr": 0.000104}]  # the method's own values


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("search.narrow.lr=[1e-9,1e-3]", r"cannot narrow lr to \[1e-09, 0.001\]: outside its "
         r"declared range \[1e-08, 10\] \(log\)"),
        ("search.narrow.momentum=[0.5,2.0]", r"cannot narrow momentum .*\[0, 1\]"),
        ("search.fix.rho=100.0", r"cannot fix rho = 100.0: outside its declared range"),
        ("search.fix.bogus=1", r"search.fix: unknown field\(s\) bogus; DAPSConfig declares"),
        ("search.fields=[lr,nope]", r"search.fields: unknown field\(s\) nope"),
        ("search.metric=sharpness", r"search.metric = 'sharpness'; allowed: psnr"),
        ("search.metric=sliced_wasserstein", r"image studies allow: psnr, ssim"),
        ("search.num_samples=0", r"search.num_samples = 0 must be >= 1"),
        ("search.asha.patience=2", r"unknown field\(s\) search\.asha\.patience; allowed in "
         r"search\.asha: max_t, grace_period, reduction_factor"),
        ("search.budget=3", r"unknown field\(s\) search.budget; allowed in search: metric"),
        ("search.points=[{lr: 1.0}]", r"search.points.0: point value lr = 1.0 is outside"),
        ("search.fix.sigma_max=0.05", r"search.fix: .*sigma_min = 0.1 must not exceed sigma_max"),
    ],
)  # fmt: skip
def test_bad_search_settings_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _shipped(override)


def test_a_config_with_several_tasks_needs_search_task() -> None:
    demo = CONFIGS / "demo.yaml"
    with pytest.raises(ConfigError, match=r"tunes one task; the config has 3 .*search.task=NAME"):
        load_tune_config(demo, ["data.split=val"])
    config = load_tune_config(
        demo, ["data.split=val", "search.task=inpaint_box", "search.method=daps_hmc"]
    )
    assert [t.name for t in config.experiment.tasks] == ["inpaint_box"]
    assert config.method.preset == "pixel_hmc/inpaint_box"
    assert config.asha() == {"max_t": 3} and config.search.mode == "max"


def test_the_best_config_becomes_a_preset_that_dipswarm_run_accepts(tmp_path: Path) -> None:
    config = _shipped(*TINY_OVERRIDES)
    document = best_document(config, {"lr": 2e-4, "momentum": 0.3}, tmp_path)
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(document))
    loaded = load_config(path)
    assert loaded.data.split == "test" and loaded.output == str(tmp_path / "best-run")
    overrides = loaded.methods[0].overrides
    assert overrides == {**TINY, "sigma_max": 20.0, "lr": 2e-4, "momentum": 0.3}


def test_the_gmm_objective_reports_running_means_per_instance() -> None:
    config = load_tune_config(CONFIGS / "tune_gmm.yaml")
    assert config.search.mode == "min" and config.gmm.first_instance >= 10_000
    gmm = GMMConfig(d=8, d_y=2, instances=2, particles=64, reference_samples=128, slices=20)
    method = dataclasses.replace(
        config.method, spec=config.method.spec.with_overrides({"annealing_steps": 5})
    )
    scores = list(score_gmm(method, gmm, {"lr": 0.5}))
    assert all(s["sliced_wasserstein"] > s["sw_floor"] > 0 for s in scores)
    reports: list[dict[str, Any]] = []
    final = GMMObjective(method, gmm)({"lr": 0.5}, reports.append)
    assert [r["step"] for r in reports] == [1, 2]
    for key in ("sliced_wasserstein", "sw_floor", "sw_over_floor"):
        assert reports[0][key] == scores[0][key]
        assert final[key] == pytest.approx((scores[0][key] + scores[1][key]) / 2, rel=1e-12)


def test_gmm_studies_never_tune_on_the_held_out_instances() -> None:
    with pytest.raises(ConfigError, match=r"gmm.first_instance = 5: instances below 10000"):
        load_tune_config(CONFIGS / "tune_gmm.yaml", ["gmm.first_instance=5"])
    raw = yaml.safe_load((CONFIGS / "tune_gmm.yaml").read_text())
    with pytest.raises(ConfigError, match=r"GMM studies use 'sliced_wasserstein'"):
        tune_config_from_dict(raw, ["search.metric=psnr"])
    with pytest.raises(ConfigError, match=r"unknown field\(s\) data; allowed in the config: name"):
        tune_config_from_dict({**raw, "data": {"images": 2}})


# ---------------------------------------------------------------- dipswarm tune (Ray)


@pytest.fixture(scope="module")
def tuned(ray_session: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``dipswarm tune`` on the shipped config with a tiny budget, without early stopping (so
    that every trial completes and the parameter importance has data)."""
    output = tmp_path_factory.mktemp("tune")
    argv = [
        "tune", "tune_daps_digits", f"output={output}", f"search.num_samples={TRIALS}",
        f"data.images={IMAGES}", "search.asha=null", *TINY_OVERRIDES,
    ]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(argv) == 0
    study_dir = output / "tune_daps_digits"
    return {
        "output": output,
        "study_dir": study_dir,
        "printed": printed.getvalue(),
        "trials": pd.read_csv(study_dir / "trials.csv"),
        "meta": json.loads((study_dir / "search_study.json").read_text()),
    }


@pytest.mark.ray
@pytest.mark.slow
def test_tune_prints_progress_best_config_and_where_to_look(tuned: dict[str, Any]) -> None:
    printed, study_dir = tuned["printed"], tuned["study_dir"]
    assert "3 trials x 2 val images, psnr (max); searching lr, lr_min_ratio, momentum, tau" in (
        printed
    )
    assert f"[tune] {TRIALS}/{TRIALS} trials finished ({TRIALS} completed" in printed
    assert "best psnr = " in printed and "lr: " in printed
    assert f"preset:    {study_dir / 'best.yaml'}  (use: dipswarm run" in printed
    assert f"mlflow ui --backend-store-uri sqlite:///{tuned['output']}/mlflow.db" in printed
    assert f"optuna-dashboard {tuned['output'] / 'optuna.journal'}" in printed
    trials = tuned["trials"]
    assert list(trials["status"]) == ["completed"] * TRIALS
    assert (trials["steps"] == IMAGES).all()
    first = trials.iloc[0]  # the method's own values are tried first
    assert (first["config/lr"], first["config/momentum"]) == (0.000104, 0.9)


@pytest.mark.ray
@pytest.mark.slow
def test_the_preset_holds_the_best_trial_and_loads_for_dipswarm_run(
    tuned: dict[str, Any],
) -> None:
    trials = tuned["trials"]
    best = trials.loc[trials["psnr"].idxmax()]
    preset = tuned["study_dir"] / "best.yaml"
    assert preset.read_text().startswith("# best config of study tune_daps_digits-")
    config = load_config(preset)
    assert config.data.split == "test" and config.data.images == IMAGES
    overrides = config.methods[0].overrides
    for name in ("lr", "lr_min_ratio", "momentum", "tau"):
        assert overrides[name] == pytest.approx(best[f"config/{name}"], rel=1e-12)
    assert {k: overrides[k] for k in TINY} == TINY


@pytest.mark.ray
@pytest.mark.slow
def test_mlflow_has_the_study_as_parent_and_one_child_per_trial(tuned: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    meta, trials = tuned["meta"], tuned["trials"]
    client = MlflowClient(meta["mlflow_uri"])
    parent = client.get_run(meta["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.info.run_name == meta["study_name"]
    assert parent.data.metrics["best_psnr"] == pytest.approx(trials["psnr"].max())
    assert "best.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    experiment = client.get_experiment_by_name("dipswarm-tune")
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    by_trial = {run.data.tags["search.trial_id"]: run for run in children}
    assert sorted(by_trial) == sorted(trials["trial_id"])
    for _, row in trials.iterrows():
        run = by_trial[row["trial_id"]]
        assert run.info.status == "FINISHED" and run.data.tags["search.status"] == "completed"
        assert float(run.data.params["lr"]) == pytest.approx(row["config/lr"], rel=1e-12)
        assert float(run.data.params["tau"]) == pytest.approx(row["config/tau"], rel=1e-12)
        history = client.get_metric_history(run.info.run_id, "psnr")
        assert [m.step for m in history] == [*range(1, IMAGES + 1), IMAGES]  # per image, final
        assert run.data.metrics["psnr"] == pytest.approx(row["psnr"])
        assert "measurement_loss" in run.data.metrics and "nfe" in run.data.metrics


@pytest.mark.ray
@pytest.mark.slow
def test_the_study_report_has_best_trials_and_parameter_importance(
    tuned: dict[str, Any], tmp_path: Path
) -> None:
    paths = report.write_study_report(tuned["study_dir"], out=tmp_path)
    assert set(paths) == {"md", "trials", "best", "importance"}
    best = pd.read_csv(paths["best"])
    assert list(best["psnr"]) == sorted(tuned["trials"]["psnr"], reverse=True)
    text = paths["md"].read_text()
    assert "## Best trials" in text and "![parameter importance](param_importance.png)" in text
    assert paths["importance"].stat().st_size > 0


@pytest.mark.ray
@pytest.mark.slow
def test_dipswarm_report_on_a_study_folder_writes_the_study_report(
    tuned: dict[str, Any],
) -> None:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        cli.main(["report", str(tuned["study_dir"])])
    assert "## Best trials" in printed.getvalue()
    best = pd.read_csv(tuned["study_dir"] / "best_trials.csv")
    assert list(best["psnr"]) == sorted(tuned["trials"]["psnr"], reverse=True)
