"""The exact-posterior GMM benchmark (experiments/benchmarks/gmm.py) on one tiny cell."""

from __future__ import annotations

import csv

import pytest

from experiments.benchmarks.gmm import Entry, Protocol, beds, main, run, select_entries
from solvers import SolverSpec

# d = 8, d_y = 2, MCGdiff instance 0, 300 samples, 100 slices.
TINY = Protocol(dims=(8,), dys=(2,), instances=1, samples=300, slices=100, seed=0)


def _by_label(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(f"{r['solver']} {r['preset']}".strip(), r["bed"]): r for r in rows}


def test_solvers_beat_prior_samples_and_approach_the_floor() -> None:
    # Measured on this cell: floor 0.091 (pixel) and 0.51 (latent bed); DAPS pixel HMC with 100
    # annealing steps SW 0.85 = 9.4 x floor; DPS 0.67 = 7.3 x; prior samples 11.0 = 120 x.
    daps = Entry(SolverSpec("daps", "gmm/pixel_hmc", {"annealing_steps": 100}), False)
    rows = _by_label(run([daps, Entry(SolverSpec("dps", "gmm"), False)], TINY))
    floor = rows[("floor", "pixel")]["sw"]
    assert 0.0 < floor < 0.5
    assert 0.0 < rows[("floor", "latent")]["sw"] < 1.0
    solver_rows = [rows[("daps gmm/pixel_hmc", "pixel")], rows[("dps gmm", "pixel")]]
    for row in solver_rows:
        assert row["floor"] == floor and row["ratio"] == pytest.approx(row["sw"] / floor)
        assert row["stopped"] == 0 and row["n"] == 300
    assert solver_rows[0]["ratio"] < 14.0 and solver_rows[0]["nfe"] == 100 * 5
    assert solver_rows[1]["ratio"] < 11.0 and solver_rows[1]["nfe"] == 200
    prior = rows[("prior (no data)", "pixel")]
    assert prior["ratio"] > 80.0
    assert all(prior["sw"] > 8 * row["sw"] for row in solver_rows)


def test_main_prints_the_table_settings_and_csv(tmp_path, capsys) -> None:
    path = tmp_path / "rows.csv"
    argv = ["--dims", "8", "--dys", "2", "--instances", "1", "--samples", "100"]
    main([*argv, "--solvers", "cdps:gmm", "--csv", str(path), "--quiet"])
    out = capsys.readouterr().out
    assert "| cdps gmm | pixel | 8 | 2 |" in out
    assert "| prior (no data) | latent | 8 | 2 |" in out
    assert "not MCGdiff's decreasing betas" in out
    assert "- cdps gmm: {'steps': 100, 'cg_iters': 10, 'chain_noise': 0.03}" in out
    assert "- cdps gmm (pixel): " in out
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [(r["solver"], r["bed"]) for r in rows] == [
        ("floor", "pixel"),
        ("prior (no data)", "pixel"),
        ("floor", "latent"),
        ("prior (no data)", "latent"),
        ("cdps", "pixel"),
    ]
    assert rows[-1]["preset"] == "gmm" and float(rows[-1]["sw"]) > 0
    table = next(line for line in out.splitlines() if line.startswith("| cdps gmm |"))
    main([*argv, "--solvers", "cdps:gmm", "--report-from", str(path)])
    assert table in capsys.readouterr().out.splitlines()  # the same report, rebuilt

    # An instance whose particles all stopped (SW nan) is counted, not averaged.
    rows.append({**rows[-1], "instance": "1", "sw": "nan", "ratio": "nan", "stopped": "100"})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    main([*argv, "--solvers", "cdps:gmm", "--report-from", str(path)])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("| cdps gmm"))
    sw = float(rows[-2]["sw"])
    assert f"| {sw:.3f} ± 0.000 (1 inst. all stopped) |" in line
    cover_50, cover_90 = (100 * float(rows[-2][f"coverage_{level}"]) for level in (50, 90))
    assert line.endswith(f"| 100 | {cover_50:.1f} | {cover_90:.1f} |")  # stopped, coverage
    assert 0 < cover_50 < cover_90 < 100


def test_presets_run_on_the_beds_they_apply_to() -> None:
    assert beds("daps", "gmm/pixel_ula") == (False,)
    assert beds("daps", "gmm/latent_hmc") == (True,)
    assert beds("daps_opt", "gmm/latent_hmc_opt") == (True,)
    assert beds("dps", "gmm") == (False,) and beds("cdps", "gmm") == (False,)
    assert beds("latent_dps", "gmm") == (True,)
    assert beds("resample", "gmm") == (False, True)
    labels = {(e.label, e.bed) for e in select_entries(None)}
    assert {("daps gmm/pixel_hmc", "pixel"), ("resample gmm", "latent")} <= labels
    assert ("daps pixel_hmc/super_resolution", "pixel") not in labels
    with pytest.raises(SystemExit, match="no gmm preset"):
        select_entries(["daps:pixel_hmc/super_resolution"])
