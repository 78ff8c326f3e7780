"""`dipswarm bench smc` and `dipswarm bench lookahead`: the target checks and rank conventions by
hand, one tiny GMM run through the command line."""

from __future__ import annotations

import argparse

import pytest
import torch

from experiments.benchmarks import smc
from experiments.benchmarks.lookahead import correlations


def _args(**changes) -> argparse.Namespace:
    base = {
        "dims": (8,),
        "dys": (1,),
        "particles": (64, 256),
        "weighted": ["tds:gmm"],
        "single_chain": ["dps:gmm_nfe100"],
    }
    return argparse.Namespace(**{**base, **changes})


def test_targets_use_the_mean_sw_for_falling_and_the_ratio_for_the_bound() -> None:
    # SW falls with N while SW / floor rises (the floor falls faster): "falls" passes
    sw = {(8, 1, "tds gmm", 64): 0.5, (8, 1, "tds gmm", 256): 0.3}
    ratio = {(8, 1, "tds gmm", 64): 1.2, (8, 1, "tds gmm", 256): 2.5}
    ratio[(8, 1, "dps gmm_nfe100", 256)] = 9.0
    rows = [
        {"solver": "tds", "preset": "gmm", "n": 256, "coverage_50": 0.47, "coverage_90": 0.80},
    ]
    lines = smc.target_lines(ratio, sw, rows, _args())
    assert "mean SW falls with N in 1 of 1 cells: PASS" in lines[0]
    assert "2.50x the floor (target <= 2x): MISS" in lines[1]
    assert "in 1 of 1 cells (target >= 5 of 6): PASS" in lines[2]
    assert "50% coverage at N = 256: 47.0" in lines[3] and lines[3].endswith("PASS")
    assert "90% coverage at N = 256: 80.0" in lines[4] and lines[4].endswith("MISS")


def test_orientation_is_judged_against_the_rotated_truth() -> None:
    truth = torch.linspace(-1, 1, 16).view(1, 1, 4, 4)
    assert smc.orientation_right(truth + 0.01, truth)
    assert not smc.orientation_right(truth.flip(-2, -1), truth)


def test_lookahead_correlations_are_plus_one_for_a_perfect_ranking() -> None:
    truth = torch.zeros(1, 1, 2, 2)
    samples = torch.stack([torch.full((1, 2, 2), v) for v in (0.1, 0.2, 0.4)])
    result = argparse.Namespace(
        all_samples=samples,
        traces={
            "particle_loss": [[1.0, 2.0, 3.0]],  # same order as the final errors
            "particle_lookahead_loss": [[3.0, 2.0, 1.0]],  # the reverse order
            "rank_corr_estimate": [0.5],
            "rank_corr_lookahead": [-0.5],
        },
    )
    values = correlations(result, truth, 0)
    assert values["estimate vs PSNR"] == pytest.approx(1.0)
    assert values["lookahead vs PSNR"] == pytest.approx(-1.0)
    assert values["estimate vs loss"] == 0.5 and values["lookahead vs loss"] == -0.5


def test_a_tiny_gmm_run_prints_the_table_and_the_targets(capsys) -> None:
    grid = ["--part", "gmm", "--dims", "8", "--dys", "1", "--instances", "1"]
    entries = ["--weighted", "tds:gmm", "--single-chain", "dps:gmm_nfe100", "--quiet"]
    smc.main([*grid, "--particles", "16,32", *entries])
    out = capsys.readouterr().out
    tds = next(line for line in out.splitlines() if line.startswith("| 8 | 1 | tds gmm |"))
    cells = [c.strip() for c in tds.strip("|").split("|")]
    assert cells[3] == "100"  # NFE per sample: one denoiser call per step
    ratios = [float(c) for c in cells[4:6]]
    assert all(0 < r < 20 for r in ratios)
    assert "- tds gmm: mean SW falls with N" in out and "(target >= 5 of 6)" in out


def test_the_tables_are_rebuilt_from_the_csv(tmp_path, capsys) -> None:
    path = tmp_path / "rows.csv"
    grid = ["--part", "gmm", "--dims", "8", "--dys", "1", "--instances", "1", "--quiet"]
    entries = ["--weighted", "tds:gmm", "--single-chain", "dps:gmm_nfe100", "--particles", "16"]
    smc.main([*grid, *entries, "--csv", str(path)])
    first = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    smc.main([*grid, *entries, "--report-from", str(path)])
    again = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert first == again and len(first) == 4  # header, rule, tds, dps
