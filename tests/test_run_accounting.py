"""Run accounting (issue 18 item 14 a, b): ``nfe`` is the delivered samples' count and
``nfe_spent`` what was computed; each image's ``seconds`` leave out the warm-up (worker start,
prior loading), which is reported apart as ``warmup_seconds`` in results.csv and MLflow."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ensemble import backends
from experiments.runner import _aggregate, run_experiment
from tests.digits_runs import daps_method, digits_config, result_rows

SLOW_START = 1.0  # seconds added to each backend start: a stand-in for Ray workers and weights


def test_warmup_is_apart_from_the_images_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = backends.LocalBackend.__init__

    def slow_start(self: backends.LocalBackend, *args: Any, **kwargs: Any) -> None:
        time.sleep(SLOW_START)
        start(self, *args, **kwargs)

    monkeypatch.setattr(backends.LocalBackend, "__init__", slow_start)
    config = digits_config(
        "accounting",
        tmp_path / "out",
        2,
        [daps_method()],
        ["execution.images_per_batch=1", "metrics.lpips=false"],
    )
    run_experiment(config, progress=False)
    rows = result_rows(tmp_path / "out")
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for row in rows:  # one image per batch: each carries its own batch's start
        assert float(row["warmup_seconds"]) >= SLOW_START
        assert float(row["seconds"]) < SLOW_START  # 3 annealing steps on 32x32: well under
        assert int(row["nfe_spent"]) == int(row["nfe"]) > 0  # nothing recomputed
    summary = _aggregate(rows)
    assert summary["warmup_seconds"] == pytest.approx(sum(float(r["warmup_seconds"]) for r in rows))
    assert summary["nfe_spent"] == summary["nfe"]
