"""The cluster-scaling benchmark (experiments/benchmarks/cluster_scaling.py): the simulated-latency
prior, the tables, efficiency and identity checks on given numbers, and a tiny simulated cluster
(2 nodes, one removed mid-run) in a process of its own."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import ensemble
from experiments.benchmarks import cluster_scaling as bench
from experiments.benchmarks.cluster_scaling import RealRow, SimRow, SimSettings
from experiments.runner import RESULT_COLUMNS
from solvers.priors import load, resolve
from solvers.priors.base import PriorInputError
from solvers.priors.gmm import SimulatedLatencyMixture


# -- the simulated-latency prior ---------------------------------------------------------------
def test_latency_prior_sleeps_a_plus_b_rows_and_keeps_the_values():
    plain = load("gmm", d=8)
    slow = load({"name": "gmm", "d": 8, "latency": [0.03, 0.01]})
    assert isinstance(slow, SimulatedLatencyMixture)
    assert slow.call_seconds(5) == pytest.approx(0.08)
    x = torch.randn(5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    slow.denoise(x, 1.0)  # first call: torch's one-off costs
    for call in ("denoise", "score"):
        began = time.perf_counter()
        value = getattr(slow, call)(x, 0.7)
        took = time.perf_counter() - began
        assert took >= 0.08
        assert torch.equal(value, getattr(plain, call)(x, 0.7))
    assert slow.nfe == 3 and plain.nfe == 2


def test_latency_prior_spec_is_checked():
    assert resolve({"name": "gmm", "d": 8, "latency": [0.0, 0.0]}).options["latency"] == [0, 0]
    for bad in ([0.1], [0.1, -1.0], [math.inf, 0.0], [True, 0.0], "ab"):
        with pytest.raises(PriorInputError, match="latency must be"):
            load({"name": "gmm", "d": 8, "latency": bad})
    with pytest.raises(PriorInputError, match="pixel mixture only"):
        load({"name": "gmm", "d": 8, "latency": [0.0, 0.0], "latent": True})


def test_fit_latency_recovers_a_line():
    a, b = bench.fit_latency([(1, 0.013 + 0.004), (4, 0.013 + 0.016), (16, 0.013 + 0.064)])
    assert a == pytest.approx(0.013) and b == pytest.approx(0.004)


# -- part 2's numbers --------------------------------------------------------------------------
def sim_row(nodes: int, seconds: float, removed: int = 0, **changes: object) -> SimRow:
    row = SimRow(
        nodes=nodes,
        jobs=32,
        seconds=seconds,
        ideal_seconds=40.0,
        driver_seconds=0.064,
        setup_seconds=12.0,
        removed=removed,
        retried=1 if removed else 0,
        digests={"job-0": "aa", "job-1": "bb"},
    )
    for name, value in changes.items():
        setattr(row, name, value)
    return row


def test_efficiency_jobs_per_second_and_driver_time():
    row = sim_row(8, 5.5)
    assert bench.efficiency(40.0, 8, 5.5) == pytest.approx(40.0 / 44.0)
    assert row.efficiency == pytest.approx(0.9090909)
    assert row.jobs_per_s == pytest.approx(32 / 5.5)
    assert row.driver_ms_per_job == pytest.approx(2.0)


def test_sim_table_rows():
    table = bench.sim_table([sim_row(1, 41.0), sim_row(8, 5.5), sim_row(4, 11.0, removed=1)])
    lines = table.splitlines()
    assert len(lines) == 5
    assert lines[2] == "| 1 | 32 | 41.00 | 40.00 | 0.78 | 0.976 | 2.00 | 12.0 | no | 0 | 0 |"
    assert lines[3] == "| 8 | 32 | 5.50 | 40.00 | 5.82 | 0.909 | 2.00 | 12.0 | no | 0 | 0 |"
    assert lines[4].endswith("| yes | 1 | 0 |")


def test_identical_finds_a_different_or_failed_job():
    assert bench.identical([sim_row(1, 41.0), sim_row(2, 21.0)]) == (True, "")
    changed = sim_row(2, 21.0, digests={"job-0": "aa", "job-1": "cc"})
    ok, where = bench.identical([sim_row(1, 41.0), changed])
    assert not ok and "job-1" in where
    missing = sim_row(2, 21.0, digests={"job-0": "aa"}, failed=1)
    assert not bench.identical([sim_row(1, 41.0), missing])[0]


def test_sim_targets_pass_and_fail_on_given_numbers():
    good = [sim_row(1, 41.0), sim_row(8, 5.5), sim_row(4, 11.0, removed=1)]
    lines = bench.sim_target_lines(good)
    assert [line.split(":")[0] for line in lines] == ["PASS"] * 4
    assert "0.909 at 8 nodes" in lines[0]
    assert "one of 4 nodes removed mid-run: all 32 jobs finished (1 re-run" in lines[3]
    slow = sim_row(8, 6.5, driver_seconds=0.2)  # efficiency 0.769, 6.25 ms per job
    changed = sim_row(4, 11.0, removed=1, digests={"job-0": "aa", "job-1": "zz"})
    lines = bench.sim_target_lines([sim_row(1, 41.0), slow, changed])
    assert [line.split(":")[0] for line in lines] == ["FAIL", "FAIL", "PASS", "FAIL"]
    assert "0.769 at 8 nodes" in lines[0] and "6.25 ms" in lines[1]


# -- part 1's numbers --------------------------------------------------------------------------
def write_results(folder: Path, psnr: list[float]) -> str:
    folder.mkdir(parents=True)
    with (folder / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, RESULT_COLUMNS)
        writer.writeheader()
        for i, value in enumerate(psnr):
            row = {"image": f"im{i}", "seed": i, "psnr": value, "ssim": 0.5, "status": "ok"}
            writer.writerow({k: row.get(k, "") for k in RESULT_COLUMNS} | {"measurement_loss": 0.1})
    return str(folder)


def test_real_table_and_targets(tmp_path: Path):
    same = [20.0, 21.0]
    out = [write_results(tmp_path / name, same) for name in "abc"]
    rows = [
        RealRow("in-process loop", 1, False, 24, 6, 60.0, 58.0, 4.5, out[0]),
        RealRow("pool, 1 worker", 1, True, 24, 6, 66.0, 70.0, 9.5, out[1]),
        RealRow("pool, 2 workers", 2, True, 24, 6, 36.0, 72.0, 12.5, out[2]),
    ]
    table = bench.real_table(rows).splitlines()
    assert table[2] == (
        "| in-process loop | 1 | 6 | 60.0 | 0.400 | 1.10 | 1.00 | 58.0 | 4.5 | 0.0e+00 |"
    )
    assert table[4] == (
        "| pool, 2 workers | 2 | 6 | 36.0 | 0.667 | 1.83 | 1.67 | 72.0 | 12.5 | 0.0e+00 |"
    )
    lines = bench.real_target_lines(rows)
    assert lines[0].startswith("PASS: pool with 2 workers = 1.83x")
    assert lines[-1].startswith("PASS: results.csv") and "bit-identical" in lines[-1]
    rows[2].seconds = 40.0  # 1.65x
    rows[2].output = write_results(tmp_path / "d", [20.0, 21.1])
    lines = bench.real_target_lines(rows)
    assert lines[0].startswith("FAIL: pool with 2 workers = 1.65x")
    assert lines[-1].startswith("FAIL: results.csv")


# -- a tiny simulated cluster ------------------------------------------------------------------
def test_tiny_simulated_cluster_survives_a_removed_node_with_the_same_values():
    """2 GPU nodes, 4 jobs of 0.5 s, one node removed mid-run: every job finishes, with the
    values of in-process runs of the same specs (the latency prior does not change them)."""
    settings = SimSettings(
        jobs=4, problems=2, particles=2, annealing_steps=4, latency=(0.02, 0.002)
    )
    payload = {
        "nodes": 2,
        "kill": True,
        "settings": {k: v for k, v in asdict(settings).items() if k != "latency"},
        "latency": list(settings.latency),
    }
    command = [sys.executable, "-m", bench.MODULE, "--sim-one", json.dumps(payload)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    row = SimRow(**json.loads(done.stdout.strip().splitlines()[-1]))
    assert (row.nodes, row.jobs, row.failed, row.removed) == (2, 4, 0, 1)
    assert row.retried >= 1
    assert row.ideal_seconds == pytest.approx(4 * 4 * 5 * settings.call_seconds())
    assert row.seconds >= row.ideal_seconds / 2  # two nodes at most
    expected = {
        key: bench.digest(ensemble.run_all(spec)) for key, spec in bench.sim_specs(settings).items()
    }
    assert row.digests == expected
