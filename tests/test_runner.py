"""The experiment runner on a shipped prior: outputs on disk, resume, failures, MLflow tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from experiments import metrics
from experiments.config import ExperimentConfig
from experiments.runner import run_experiment
from tests.digits_runs import daps_method, digits_config, result_rows

pytestmark = pytest.mark.slow


def _config(output: Path, images: int = 2) -> ExperimentConfig:
    """DAPS (two particles, the best returned), and a "broken" ensemble whose DINO feature
    model does not exist."""
    broken = {
        "particles": 2,
        "features": "dino",
        "dino_model": str(output / "none"),
        "repulsion": {"weight": 1.0},
    }
    return digits_config(
        "unit",
        output,
        images,
        [
            daps_method(ensemble={"particles": 2, "selection": "best"}),
            daps_method("broken", ensemble=broken),
        ],
        [],
        metrics={"lpips": True, "lpips_net": "vgg", "lpips_random_backbone": True},
        tracking={"experiment": "unit"},
    )


def test_runs_scores_saves_and_resumes(tmp_path: Path) -> None:
    output = tmp_path / "run"
    seen: list[dict[str, Any]] = []
    run_experiment(_config(output, images=1), progress=False, on_image=seen.append)
    first = result_rows(output)
    assert [(r["method"], r["status"]) for r in first] == [("daps", "ok"), ("broken", "failed")]
    assert (
        first[1]["error"].startswith("FileNotFoundError: dino_model")
        and "is not a folder" in first[1]["error"]
    )
    assert (output / "errors.log").read_text().count("--- box / broken") == 1

    # the saved tensors reproduce the recorded metrics
    saved = torch.load(output / "samples" / "box" / "daps" / f"{first[0]['image']}.pt")
    truth, chosen = saved["ground_truth"][None], saved["selected"]
    assert float(metrics.psnr(chosen, truth)) == pytest.approx(float(first[0]["psnr"]), rel=1e-6)
    # coverage: of every particle, not only the selected one, in [0, 1] units
    unit = [(t.double().clamp(-1, 1) + 1) / 2 for t in (saved["samples"], saved["ground_truth"])]
    coverage = metrics.coverage(*unit[:1], None, unit[1])
    for name in metrics.COVERAGE_COLUMNS:
        assert float(first[0][name]) == pytest.approx(coverage[name], rel=1e-12)
    assert (output / "images" / "box" / "daps" / f"{first[0]['image']}.png").is_file()
    assert (output / "config.yaml").is_file() and (output / "report.md").is_file()

    with pytest.raises(FileExistsError, match="--resume"):
        run_experiment(_config(output, images=2), progress=False)
    seen.clear()
    run_experiment(_config(output, images=2), resume=True, progress=False, on_image=seen.append)
    # finished image skipped; the failed one and the new image run
    assert [(r["method"], r["index"]) for r in seen] == [("daps", 1), ("broken", 0), ("broken", 1)]
    rows = result_rows(output)  # the re-run failed image replaced its row, in place
    assert rows[0] == first[0]
    assert [(r["method"], r["index"]) for r in rows] == [
        ("daps", "0"),
        ("broken", "0"),
        ("daps", "1"),
        ("broken", "1"),
    ]


def test_mlflow_tree_has_parent_children_params_metrics_and_artifacts(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    output = tmp_path / "tracked"
    run_experiment(_config(output, images=1), progress=False)
    client = MlflowClient(f"sqlite:///{output.resolve()}/mlflow.db")
    experiment = client.get_experiment_by_name("unit")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert parent.data.params["data.images"] == "1"
    ok = next(c for c in children if c.data.params["method"] == "daps")
    assert ok.info.status == "FINISHED"
    row = result_rows(output)[0]
    assert ok.data.metrics["psnr_mean"] == pytest.approx(float(row["psnr"]))
    assert ok.data.metrics["coverage_90_mean"] == pytest.approx(float(row["coverage_90"]))
    image = row["image"]
    history = client.get_metric_history(ok.info.run_id, f"{image}/loss_best")
    assert [m.step for m in history] == [0, 1, 2]
    artifacts = [a.path for a in client.list_artifacts(ok.info.run_id, "images")]
    assert artifacts == [f"images/{image}.png"]
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "results.csv" in parent_artifacts and "report" in parent_artifacts
    broken = next(c for c in children if c.data.params["method"] == "broken")
    assert broken.data.metrics["failed"] == 1.0
    assert parent.data.metrics["tracking_seconds"] > 0
