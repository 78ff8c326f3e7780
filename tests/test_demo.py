"""`dipswarm demo`, the main job, end to end on a reduced budget (one image, few steps)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from experiments.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.ray]

FAST = [
    "data.images=1",
    *[
        f"methods.{m}.overrides.{k}={v}"
        for m in ("daps_hmc", "daps_hmc_x4_ensemble")
        for k, v in (("annealing_steps", 6), ("mcmc_steps", 3), ("ode_steps", 1))
    ],
    "methods.daps_hmc_x4_ensemble.ensemble.pruning.steps=[3]",
]


def test_demo_runs_and_says_where_everything_is(ray_session, tmp_path: Path, capsys) -> None:
    output = tmp_path / "demo"
    assert main(["demo", "--output", str(output), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "| super_resolution_x4 | daps_hmc |" in printed
    assert "| inpaint_box | daps_hmc_x4_ensemble |" in printed
    assert f"mlflow ui --backend-store-uri sqlite:///{output.resolve()}/mlflow.db" in printed
    assert f"images:   {output.resolve() / 'images'}" in printed
    with (output / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    assert {r["particles"] for r in rows} == {"1", "4"}
    assert (output / "overview.png").is_file()
