"""The image-batches benchmark (experiments/benchmarks/image_batches.py): tables, ratios, the
results.csv identity check, the memory sampler and the UNet timing, on tiny inputs."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from experiments.benchmarks import image_batches as bench
from experiments.benchmarks.image_batches import RunRow, UNetRow
from experiments.runner import RESULT_COLUMNS
from solvers.priors.guided_diffusion import GuidedDiffusionConfig

# 32 px, widths 32/64/64 (GroupNorm needs multiples of 32), attention at 8 px
TINY_UNET = GuidedDiffusionConfig(
    image_size=32,
    model_channels=32,
    num_res_blocks=1,
    channel_mult=(1, 2, 2),
    attention_resolutions=(8,),
    num_head_channels=32,
)
TINY_DAPS = {
    "name": "daps_hmc",
    "solver": "daps",
    "preset": "pixel_hmc/{task}",
    "overrides": {"annealing_steps": 2, "mcmc_steps": 2, "ode_steps": 1, "sigma_max": 20.0},
}


def write_results(folder: Path, rows: list[dict[str, object]]) -> Path:
    folder.mkdir(parents=True)
    with (folder / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, RESULT_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in RESULT_COLUMNS})
    return folder


def result(image: str, psnr: float, status: str = "ok", seed: int = 7) -> dict[str, object]:
    return {
        "image": image,
        "seed": seed,
        "psnr": psnr,
        "ssim": 0.5,
        "measurement_loss": 0.01,
        "status": status,
    }


def run_row(method: str, size: int, seconds: float, output: str = "") -> RunRow:
    return RunRow(method, size, 16, seconds, 3.0 * seconds, 1000.0 + size, 10.0 * size, output)


def test_relative_difference():
    assert bench.relative_difference(2.0, 2.0) == 0.0
    assert bench.relative_difference(1.0, 1.0001) == pytest.approx(1e-4 / 1.0001)
    assert bench.relative_difference(-2.0, 2.0) == 2.0
    assert bench.relative_difference(math.nan, math.nan) == 0.0
    assert bench.relative_difference(math.nan, 1.0) == math.inf


def test_max_difference_finds_the_worst_cell_and_refuses_mismatches(tmp_path):
    a = bench.read_results(write_results(tmp_path / "a", [result("x", 20.0), result("y", 30.0)]))
    b = bench.read_results(write_results(tmp_path / "b", [result("x", 20.0), result("y", 30.3)]))
    diff, where = bench.max_difference(a, b)
    assert diff == pytest.approx(0.3 / 30.3) and where == "y/psnr"
    assert bench.max_difference(a, a) == (0.0, "x/psnr")
    fewer = bench.read_results(write_results(tmp_path / "c", [result("x", 20.0)]))
    assert bench.max_difference(a, fewer)[0] == math.inf
    failed = bench.read_results(
        write_results(tmp_path / "d", [result("x", 20.0), result("y", 30.0, status="failed")])
    )
    assert bench.max_difference(a, failed)[0] == math.inf
    reseeded = bench.read_results(
        write_results(tmp_path / "e", [result("x", 20.0, seed=8), result("y", 30.0)])
    )
    assert bench.max_difference(a, reseeded)[0] == math.inf


def test_throughput_table_and_targets(tmp_path):
    same = [result("x", 20.0), result("y", 30.0)]
    off = [result("x", 20.0), result("y", 30.3)]
    rows = [
        run_row("daps_hmc", 1, 32.0, str(write_results(tmp_path / "d1", same))),
        run_row("daps_hmc", 16, 8.0, str(write_results(tmp_path / "d16", same))),
        run_row("dps", 1, 64.0, str(write_results(tmp_path / "p1", same))),
        run_row("dps", 16, 32.0, str(write_results(tmp_path / "p16", off))),
    ]
    table = bench.throughput_table(rows).splitlines()
    assert table[2] == "| daps_hmc | 1 | 16 | 32.0 | 0.500 | 1.00 | 96.0 | 1.00 | 1001 | 10 |"
    assert table[3] == "| daps_hmc | 16 | 16 | 8.0 | 2.000 | 4.00 | 24.0 | 4.00 | 1016 | 160 |"
    rows[3].cpu_seconds = 48.0  # CPU time need not scale like wall time
    table = bench.throughput_table(rows).splitlines()
    assert table[5] == "| dps | 16 | 16 | 32.0 | 0.500 | 2.00 | 48.0 | 4.00 | 1016 | 160 |"
    lines = bench.target_lines(rows)
    assert "PASS: daps_hmc images/s at 16/batch = 4.00x" in lines[-2]
    assert "per CPU second: 4.00x" in lines[-2]
    assert lines[-1].startswith("FAIL: results.csv identical")  # dps differs by 1%
    assert "dps: 16/batch vs 1/batch, max relative difference" in lines[1]
    slow = [
        run_row("daps_hmc", 1, 32.0, rows[0].output),
        run_row("daps_hmc", 16, 16.0, rows[1].output),
    ]
    assert bench.target_lines(slow)[-2].startswith("FAIL: daps_hmc images/s at 16/batch = 2.00x")
    assert bench.target_lines(slow)[-1].startswith("PASS: results.csv identical")


def test_peak_rss_sees_an_allocation_inside_the_block():
    with bench.PeakRSS(interval=0.001) as memory:
        block = bytearray(200 * 2**20)  # touched: 200 MB resident
        block[::4096] = b"x" * len(block[::4096])
    del block
    assert memory.growth_mb > 150


def test_unet_timing_on_a_tiny_unet():
    rows = bench.time_unet(TINY_UNET, [4, 1], repeats=2, call_limit=60.0)
    assert [r.batch for r in rows] == [1, 4] and [r.calls for r in rows] == [2, 2]
    assert all(r.seconds > 0 for r in rows)
    assert rows[1].per_row == pytest.approx(rows[1].seconds / 4)
    skipped = bench.time_unet(TINY_UNET, [1, 2], repeats=1, call_limit=1e-9)
    assert skipped[1].calls == 0  # estimated over the limit: not run
    assert skipped[1].seconds == pytest.approx(2 * skipped[0].seconds)


def test_unet_table_ratios():
    rows = [UNetRow(1, 2.0, 3), UNetRow(4, 4.0, 2), UNetRow(32, 64.0, 0)]
    table = bench.unet_table(rows).splitlines()
    assert table[2] == "| 1 | 3 | 2.00 | 2.000 | 1.00 |"
    assert table[3] == "| 4 | 2 | 4.00 | 1.000 | 0.50 |"
    assert table[4] == "| 32 | skipped | ~64 (est.) | - | - |"


def test_a_real_two_image_run_is_identical_for_one_and_two_images_per_batch(tmp_path):
    rows = [
        bench.measure_run(bench.experiment(TINY_DAPS, 2, size, 1, str(tmp_path / f"r{size}")))
        for size in (1, 2)
    ]
    assert [(r.method, r.images_per_batch, r.images) for r in rows] == [
        ("daps_hmc", 1, 2),
        ("daps_hmc", 2, 2),
    ]
    assert all(r.seconds > 0 and r.cpu_seconds > 0 and r.peak_mb >= r.growth_mb >= 0 for r in rows)
    assert len(bench.read_results(rows[0].output)) == 2
    assert Path(rows[0].output + "-warmup", "results.csv").exists()
    lines = bench.target_lines(rows)
    assert lines[-1].startswith("PASS: results.csv identical"), lines
