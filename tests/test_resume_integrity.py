"""Resume keeps results.csv one consistent table (issue 18, items 1, 3, 4 and 8).

A resume under a config that changes results refuses and names the differing fields; allowed
changes (more images, tracking, execution) are recorded beside the stored config; rows that
failed and then succeeded on resume are replaced; a run that failed before its first image
leaves no results; ``dipswarm demo --resume`` continues the latest demo folder."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from experiments import cli
from experiments.config import ConfigError, ExperimentConfig
from experiments.report import load_results
from experiments.runner import RESULT_COLUMNS, run_experiment
from tests.digits_runs import daps_method, digits_config, result_rows

pytestmark = pytest.mark.slow

QUIET = {"metrics": {"lpips": False}, "tracking": {"enabled": False}}


def _config(output: Path, images: int = 1, overrides: list[str] | None = None) -> ExperimentConfig:
    """One DAPS method (two particles, the best kept) on ``images`` digits, no LPIPS or MLflow."""
    method = daps_method(ensemble={"particles": 2, "selection": "best"})
    return digits_config("resume", output, images, [method], overrides or [], **QUIET)


def test_resume_refuses_a_config_that_changes_results(tmp_path: Path) -> None:
    output = tmp_path / "run"
    run_experiment(_config(output), progress=False)
    stored = (output / "config.yaml").read_text()
    rows = result_rows(output)
    changed = ["seed=7", "methods.daps.overrides.annealing_steps=6", "data.images=2"]
    with pytest.raises(ConfigError) as refused:
        run_experiment(_config(output, overrides=changed), resume=True, progress=False)
    message = str(refused.value)
    assert "  seed: 0 -> 7" in message
    assert "  methods.daps.overrides.annealing_steps: 3 -> 6" in message
    assert "data.images" not in message  # allowed, so not among the reasons
    fix = f"dipswarm run {output.resolve() / 'config.yaml'} output={output.resolve()} --resume"
    assert fix in message
    # nothing touched: the stored config and the rows stay as they were
    assert (output / "config.yaml").read_text() == stored and result_rows(output) == rows
    assert not list(output.glob("config.resume-*.yaml"))


def test_resume_with_allowed_changes_records_them_beside_the_stored_config(
    tmp_path: Path,
) -> None:
    output = tmp_path / "run"
    run_experiment(_config(output), progress=False)
    stored = (output / "config.yaml").read_text()
    first = result_rows(output)
    allowed = ["data.images=2", "execution.images_per_batch=1", "tracking.experiment=other"]
    run_experiment(_config(output, overrides=allowed), resume=True, progress=False)
    rows = result_rows(output)
    assert rows[0] == first[0] and [r["index"] for r in rows] == ["0", "1"]
    assert (output / "config.yaml").read_text() == stored  # the first rows' provenance
    recorded = output / "config.resume-1.yaml"
    text = recorded.read_text()
    assert "#   data.images: 1 -> 2\n" in text
    assert "#   execution.images_per_batch: auto -> 1\n" in text
    assert "#   tracking.experiment: dipswarm -> other\n" in text
    assert yaml.safe_load(text)["data"]["images"] == 2
    # the next resume compares with the latest recorded config and names it as the fix
    with pytest.raises(ConfigError, match=f"dipswarm run {recorded} output="):
        run_experiment(_config(output, 2, ["seed=1"]), resume=True, progress=False)


def test_allowed_fields_are_the_documented_ones() -> None:
    from experiments.resume import may_differ_on_resume

    assert may_differ_on_resume("tracking.uri", None, "http://x")
    assert may_differ_on_resume("execution.max_concurrent_jobs", 1, 4)
    assert may_differ_on_resume("ensemble.workers", 1, 2)
    assert may_differ_on_resume("methods.daps.ensemble.backend", "local", "ray")
    assert may_differ_on_resume("data.images", 2, 5) and may_differ_on_resume("data.images", 2, 0)
    assert not may_differ_on_resume("data.images", 5, 2)  # fewer images: rows beyond stay
    assert not may_differ_on_resume("data.images", 0, 5)
    assert not may_differ_on_resume("ensemble.particles", 2, 4)
    assert not may_differ_on_resume("methods.daps.ensemble.repulsion.weight", 0.0, 1.0)
    assert not may_differ_on_resume("tasks.box.sigma", 0.05, 0.1)
    assert not may_differ_on_resume("metrics.lpips_net", "vgg", "alex")
    assert not may_differ_on_resume("device", "cpu", "cuda")
    docs = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert "## Resuming a run" in docs and "config.resume-1.yaml" in docs


def test_rows_that_failed_are_replaced_when_resume_succeeds(tmp_path: Path) -> None:
    """A memory ceiling no run fits fails both images; resumed without it (an execution field,
    so allowed), they succeed and results.csv holds one ok row per image."""
    output = tmp_path / "run"
    run_experiment(_config(output, 2, ["execution.memory_limit_mb=1"]), progress=False)
    assert [r["status"] for r in result_rows(output)] == ["failed", "failed"]
    run_experiment(_config(output, 2), resume=True, progress=False)
    rows = result_rows(output)
    assert [(r["index"], r["status"], r["error"]) for r in rows] == [
        ("0", "ok", ""),
        ("1", "ok", ""),
    ]
    assert int((load_results(output)["status"] != "ok").sum()) == 0
    assert not list(output.glob("*.tmp"))


def test_a_run_that_fails_before_its_first_image_leaves_no_results(tmp_path: Path) -> None:
    folder, output = tmp_path / "images", tmp_path / "run"
    folder.mkdir()
    overrides = ["data.dataset=folder", f"data.folder={folder}", "data.size=32", "data.channels=1"]
    with pytest.raises(Exception, match="no image files"):
        run_experiment(_config(output, overrides=overrides), progress=False)
    assert not (output / "results.csv").exists()
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "a.png")
    run_experiment(_config(output, overrides=overrides), progress=False)  # no --resume needed
    assert [r["image"] for r in result_rows(output)] == ["a.png"]


def test_a_header_only_results_file_is_no_results(tmp_path: Path) -> None:
    """Such files were left by earlier versions after a failure before the first image."""
    output = tmp_path / "run"
    output.mkdir()
    with (output / "results.csv").open("w", newline="") as f:
        csv.DictWriter(f, RESULT_COLUMNS).writeheader()
    run_experiment(_config(output), progress=False)
    assert [r["status"] for r in result_rows(output)] == ["ok"]


def _demo_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, bool]]:
    calls: list[tuple[Any, bool]] = []
    monkeypatch.setattr(
        cli, "_run_and_summarise", lambda config, resume, progress: calls.append((config, resume))
    )
    return calls


def test_demo_resume_continues_the_latest_demo_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    calls = _demo_calls(monkeypatch)
    with pytest.raises(SystemExit, match=r"no earlier demo under .*dipswarm-demo"):
        cli.main(["demo", "--resume"])
    assert calls == []
    for stamp in ("20240101-120000", "20240301-090000", "20240201-235959"):
        (tmp_path / "dipswarm-demo" / stamp).mkdir(parents=True)
    (tmp_path / "dipswarm-demo" / "notes").mkdir()
    cli.main(["demo", "--resume"])
    latest = tmp_path / "dipswarm-demo" / "20240301-090000"
    assert [(Path(c.output), resume) for c, resume in calls] == [(latest, True)]
    assert f"resuming {latest}" in capsys.readouterr().out
    cli.main(["demo", "--resume", "--output", str(tmp_path / "mine")])
    assert (Path(calls[-1][0].output), calls[-1][1]) == (tmp_path / "mine", True)
