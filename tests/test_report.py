"""Reports on a fake output folder: numbers against numpy, files re-read, grid pixels, MLflow."""

from __future__ import annotations

import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from experiments import report
from experiments.report.grids import OVERVIEW_HEADER
from experiments.runner import RESULT_COLUMNS as COLUMNS  # the results.csv layout

RANDOM = "random-vgg (not comparable to papers)"
# (task, method) -> number of images; the first pair also gets one failed image
PAIRS = {("sr", "dps"): 3, ("sr", "daps"): 4, ("inpaint", "dps"): 2, ("inpaint", "daps"): 1}


def _results(gen: torch.Generator) -> pd.DataFrame:
    """Per-image rows in the runner's layout, pairs interleaved, one failed row (no metrics)."""
    rows = []
    for (task, method), n in PAIRS.items():
        for i in range(n):
            m = torch.rand(4, generator=gen, dtype=torch.float64).tolist()
            rows.append(
                dict(
                    task=task,
                    method=method,
                    image=f"test_{i:04d}",
                    index=i,
                    seed=i,
                    psnr=20 + 10 * m[0],
                    ssim=m[1],
                    lpips=m[2],
                    lpips_backbone=RANDOM,
                    measurement_loss=m[3],
                    diversity=0.1,
                    posterior_std=0.2,
                    nfe=100 if method == "dps" else 400,
                    seconds=1 + m[3],
                    particles=4,
                    status="ok",
                    error="",
                )
            )
    failed = dict.fromkeys(COLUMNS, None) | dict(
        task="sr",
        method="dps",
        image="test_0009",
        index=9,
        seed=9,
        status="failed",
        error="RuntimeError: diverged",
        lpips_backbone=RANDOM,
    )
    rows.insert(1, failed)
    return pd.DataFrame(rows, columns=COLUMNS)


def _sample(gen: torch.Generator, measurement_shape: tuple[int, ...], n: int) -> dict:
    """A samples/<task>/<method>/<image>.pt dict with values beyond [-1, 1] to test clipping."""
    shape = (1, 8, 6)
    samples = torch.rand(n, *shape, generator=gen) * 2.4 - 1.2
    return {
        "ground_truth": torch.rand(shape, generator=gen) * 2 - 1,
        "measurement": torch.rand(measurement_shape, generator=gen) * 2 - 1,
        "samples": samples,
        "selected": samples[:2],
        "mean": samples.mean(0),
        "std": samples.std(0),
    }


@pytest.fixture
def output(tmp_path: Path) -> Path:
    """A fake output folder: results.csv and two sample files (image-shaped or not y)."""
    gen = torch.Generator().manual_seed(0)
    out = tmp_path / "run_a"
    out.mkdir()
    _results(gen).to_csv(out / "results.csv", index=False)
    for task, y_shape, n in (("inpaint", (1, 8, 6), 5), ("sr", (1, 2, 3), 3)):
        folder = out / "samples" / task / "dps"
        folder.mkdir(parents=True)
        torch.save(_sample(gen, y_shape, n), folder / "test_0000.pt")
        torch.save(_sample(gen, y_shape, n), folder / "test_0001.pt")
    return out


def test_summary_matches_numpy_and_counts_failed(output: Path) -> None:
    df = report.load_results(output)
    summary = report.summary_table(df)
    assert list(summary.index) == list(PAIRS)  # first-appearance order
    for (task, method), n in PAIRS.items():
        rows = df[(df.task == task) & (df.method == method)]
        ok = rows[rows.status == "ok"]
        assert len(ok) == n
        got = summary.loc[(task, method)]
        for m in report.METRICS:
            values = ok[m].to_numpy(dtype=float)
            assert got[f"{m}_mean"] == pytest.approx(np.mean(values), rel=1e-12)
            std = np.std(values, ddof=1) if n > 1 else math.nan
            assert got[f"{m}_std"] == pytest.approx(std, rel=1e-12, nan_ok=True)
        assert got["images"] == n
        assert got["failed"] == len(rows) - n
        assert got["seconds_per_image"] == pytest.approx(ok.seconds.mean())
        assert got["nfe"] == (100 if method == "dps" else 400)
        mean, std = got["psnr_mean"], got["psnr_std"]
        assert got["psnr"] == (f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}")
    assert summary.loc[("sr", "dps"), "failed"] == 1
    assert summary.loc[("sr", "dps"), "images"] == 3


def test_markdown_rows_values_and_backbone_note(output: Path) -> None:
    summary = report.summary_table(report.load_results(output))
    text = report.markdown_table(summary)
    lines = text.splitlines()
    assert lines[0].startswith("| task | method | PSNR ↑ | SSIM ↑ | LPIPS ↓ †")
    body = [line for line in lines[2:] if line.startswith("| ")]
    assert [tuple(line.split(" | ")[:2]) for line in body] == [(f"| {t}", m) for t, m in PAIRS]
    first = summary.loc[("sr", "dps")]
    cells = body[0].split(" | ")
    assert cells[2] == f"{first.psnr_mean:.2f} ± {first.psnr_std:.2f}"
    assert cells[3] == f"{first.ssim_mean:.3f} ± {first.ssim_std:.3f}"
    assert cells[4] == f"{first.lpips_mean:.3f} ± {first.lpips_std:.3f}"
    assert cells[5] == "3 (1)"
    assert "randomly initialised backbone" in text and RANDOM in text


def test_coverage_columns_shown_where_recorded(output: Path) -> None:
    """Coverage columns (runs with several particles) join the tables as mean ± std; a pair
    without them (one particle: blank cells) shows n/a, and rows without any show none."""
    df = report.load_results(output)
    gen = np.random.default_rng(0)
    several = (df.method == "daps") & (df.status == "ok")
    for name in ("coverage_50", "coverage_90"):
        df[name] = np.where(several, gen.uniform(0, 1, len(df)), np.nan)
    df.to_csv(output / "results.csv", index=False)
    summary = report.summary_table(report.load_results(output))
    ok = df[several & (df.task == "sr")]
    got = summary.loc[("sr", "daps")]
    assert got["coverage_90_mean"] == pytest.approx(ok.coverage_90.mean(), rel=1e-12)
    assert got["coverage_90_std"] == pytest.approx(ok.coverage_90.std(ddof=1), rel=1e-12)
    lines = report.markdown_table(summary).splitlines()
    assert lines[0].startswith("| task | method | PSNR ↑ | SSIM ↑ | LPIPS ↓ † | coverage 50% | ")
    cells = {tuple(line.split(" | ")[:2]): line.split(" | ") for line in lines[2:6]}
    assert cells[("| sr", "daps")][6] == f"{got.coverage_90_mean:.3f} ± {got.coverage_90_std:.3f}"
    assert cells[("| sr", "dps")][5:7] == ["n/a", "n/a"]
    # MLflow rows: the aggregated columns, NaN where a child did not log them.
    aggregated = pd.DataFrame(
        {"task": ["sr", "sr"], "method": ["dps", "daps"], "psnr_mean": [25.0, 27.0]}
        | {f"coverage_50_{s}": [math.nan, v] for s, v in (("mean", 0.45), ("std", 0.05))}
    )
    assert "coverage_50" in report.summary_table(aggregated).columns
    assert "coverage_50" not in report.summary_table(aggregated.iloc[:1]).columns


class _Cells(HTMLParser):
    """Texts of the <td> cells of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._inside = tag == "td"
        if self._inside:
            self.cells.append("")

    def handle_data(self, data: str) -> None:
        if self._inside:
            self.cells[-1] += data.strip()


def test_write_report_files_reread(output: Path) -> None:
    paths = report.write_report(output)
    assert {p.name for p in paths.values()} == {
        "report.md",
        "report.csv",
        "report.html",
        "psnr_vs_nfe.png",
        "overview.png",
    }
    summary = report.summary_table(report.load_results(output))
    csv = pd.read_csv(paths["csv"])
    assert list(zip(csv.task, csv.method, strict=True)) == list(PAIRS)
    np.testing.assert_allclose(csv.psnr_mean, summary.psnr_mean, rtol=1e-12)
    np.testing.assert_allclose(csv.lpips_std, summary.lpips_std, rtol=1e-12)
    assert list(csv.psnr) == list(summary.psnr)
    parser = _Cells()
    parser.feed(paths["html"].read_text(encoding="utf-8"))
    for label in summary.psnr:
        assert label in parser.cells
    assert report.markdown_table(summary) in paths["md"].read_text(encoding="utf-8")
    with Image.open(paths["plot"]) as image:
        assert image.width > 300 and image.height > 200


@pytest.mark.parametrize(("task", "shown_y"), [("inpaint", True), ("sr", False)])
def test_image_grid_width_and_pixels(output: Path, tmp_path: Path, task: str, shown_y: bool):
    source = output / "samples" / task / "dps" / "test_0000.pt"
    sample = torch.load(source, weights_only=True)
    max_samples = 4
    png = report.image_grid(source, tmp_path / "grid.png", max_samples=max_samples)
    shown = min(max_samples, len(sample["samples"]))
    panels = 1 + int(shown_y) + shown + 2
    with Image.open(png) as image:
        assert image.mode == "L"
        pixels = np.asarray(image)
    assert pixels.shape == (8, panels * 6)

    def mapped(x: torch.Tensor) -> np.ndarray:
        return np.rint(np.clip((x[0].double().numpy() + 1) / 2, 0, 1) * 255)

    expected = [mapped(sample["ground_truth"])]
    if shown_y:
        expected.append(mapped(sample["measurement"]))
    expected += [mapped(s) for s in sample["samples"][:shown]]
    expected.append(mapped(sample["mean"]))
    std = sample["std"][0].double().numpy()
    expected.append(np.rint(std / std.max() * 255))
    for k, panel in enumerate(expected):
        for r, c in ((0, 0), (3, 2), (7, 5)):
            assert pixels[r, k * 6 + c] == panel[r, c], (k, r, c)


def test_overview_one_row_per_pair(output: Path) -> None:
    png = report.overview_grid(output)
    assert png == output / "overview.png"
    scale = report.OVERVIEW_HEIGHT // 8  # 8-pixel images enlarged to 64
    with Image.open(png) as image:
        assert image.height == OVERVIEW_HEADER + 2 * 8 * scale  # column labels, two rows
        assert image.width > (1 + 1 + 4 + 2) * 6 * scale  # widest row plus the labels
        grid = np.asarray(image.convert("L"))
    sample = torch.load(output / "samples" / "inpaint" / "dps" / "test_0000.pt", weights_only=True)
    truth = np.rint(np.clip((sample["ground_truth"][0].double().numpy() + 1) / 2, 0, 1) * 255)
    left = image.width - (1 + 1 + 4 + 2) * 6 * scale  # inpaint has the widest row
    top = OVERVIEW_HEADER
    rows = slice(top, top + 8 * scale, scale)
    assert grid[rows, left : left + 6 * scale : scale].tolist() == truth.tolist()


def test_load_many_keeps_runs_apart(output: Path, tmp_path: Path) -> None:
    other = tmp_path / "run_b"
    other.mkdir()
    (output / "results.csv").replace(other / "results.csv")
    _results(torch.Generator().manual_seed(1)).to_csv(output / "results.csv", index=False)
    df = report.load_many([output, other])
    assert list(df.columns[:3]) == ["run", "task", "method"]
    summary = report.summary_table(df)
    assert summary.index.names == ["run", "task", "method"]
    assert len(summary) == 2 * len(PAIRS)
    mine = df[(df.run == "run_b") & (df.task == "inpaint") & (df.method == "dps")]
    got = summary.loc[("run_b", "inpaint", "dps"), "ssim_mean"]
    assert got == pytest.approx(mine.ssim.mean())


def test_main_writes_report(output: Path, capsys: pytest.CaptureFixture) -> None:
    report.main([str(output)])
    assert "| sr | dps |" in capsys.readouterr().out
    assert (output / "report.md").is_file()


@pytest.mark.slow
def test_load_mlflow_reads_child_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("bench", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment, run_name="sweep")
    logged = {
        ("sr", "dps"): dict(
            psnr_mean=25.5,
            psnr_std=1.25,
            ssim_mean=0.7,
            ssim_std=0.05,
            lpips_mean=0.3,
            lpips_std=0.02,
            nfe=100.0,
            seconds_per_image=2.0,
            images=3.0,
            failed=1.0,
        ),
        ("sr", "daps"): dict(
            psnr_mean=27.0,
            psnr_std=0.5,
            ssim_mean=0.8,
            ssim_std=0.01,
            lpips_mean=0.2,
            lpips_std=0.03,
            nfe=400.0,
            seconds_per_image=5.0,
            images=4.0,
            failed=0.0,
        ),
    }
    for (task, method), metrics in logged.items():
        child = client.create_run(
            experiment, tags={"mlflow.parentRunId": parent.info.run_id}, run_name=method
        )
        client.log_param(child.info.run_id, "task", task)
        client.log_param(child.info.run_id, "method", method)
        client.log_metric(child.info.run_id, "psnr_mean", 1.0, step=0)  # overwritten below
        for name, value in metrics.items():
            client.log_metric(child.info.run_id, name, value, step=1)
        client.set_terminated(child.info.run_id)
    client.set_terminated(parent.info.run_id)

    df = report.load_mlflow(uri, "bench")
    assert list(zip(df.task, df.method, strict=True)) == list(logged)
    assert set(df.run) == {"sweep"}
    for row, metrics in zip(df.itertuples(), logged.values(), strict=True):
        for name, value in metrics.items():
            assert getattr(row, name) == value
    summary = report.summary_table(df)
    assert summary.loc[("sr", "dps"), "psnr"] == "25.50 ± 1.25"
    assert "| sr | daps | 27.00 ± 0.50 | 0.800 ± 0.010 | 0.200 ± 0.030 | 4 (0) | 400 |" in (
        report.markdown_table(summary)
    )
    with pytest.raises(ValueError, match="no MLflow experiment"):
        report.load_mlflow(uri, "missing")
    with pytest.raises(FileNotFoundError, match="no MLflow database"):
        report.load_mlflow(f"sqlite:///{tmp_path.resolve()}/other.db", "bench")
    assert not (tmp_path / "other.db").exists()


# ---------------------------------------------------------------- study reports (dipswarm tune)


def _toy_study(folder: Path) -> Path:
    """A study folder as ``search.tune`` leaves it (record + Optuna journal), written with
    Optuna directly: psnr = 20 + 10 x (y does not matter), one trial stopped early, one failed."""
    import json

    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    journal = folder / "optuna.journal"
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(
        study_name="toy-0000beef", storage=storage, direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )  # fmt: skip
    space = {"x": FloatDistribution(0.0, 1.0), "y": FloatDistribution(0.0, 1.0)}
    for number in range(10):
        trial = study.ask(space)
        trial.set_user_attr("tune_trial_id", f"t{number}")
        value = 20 + 10 * trial.params["x"]
        trial.report(value - 1, 1)
        if number == 3:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif number == 5:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            trial.report(value, 2)
            study.tell(trial, value)
    study_dir = folder / "toy"
    study_dir.mkdir()
    meta = {
        "metric": "psnr", "mode": "max", "num_samples": 10, "sampler": "random", "seed": 0,
        "asha": None, "study_name": "toy-0000beef", "experiment_path": str(study_dir),
        "optuna_journal": str(journal), "space": {"x": "Float(0, 1)", "y": "Float(0, 1)"},
    }  # fmt: skip
    (study_dir / report.STUDY_FILE).write_text(json.dumps(meta))
    return study_dir


def test_study_report_tables_and_parameter_importance(tmp_path: Path) -> None:
    study_dir = _toy_study(tmp_path)
    paths = report.write_study_report(study_dir)
    assert set(paths) == {"md", "trials", "best", "importance"}
    trials = pd.read_csv(paths["trials"])
    assert list(trials["status"]).count("completed") == 8
    assert trials.set_index("number").at[3, "status"] == "stopped"
    assert trials.set_index("number").at[3, "steps"] == 1
    assert trials.set_index("number").at[5, "status"] == "failed"
    best = pd.read_csv(paths["best"])
    assert len(best) == 8 and list(best["psnr"]) == sorted(best["psnr"], reverse=True)
    np.testing.assert_allclose(best["psnr"], 20 + 10 * best["x"])
    text = paths["md"].read_text()
    assert "- trials: 10 of 10 (8 completed, 1 failed, 1 stopped); compute 18 steps" in text
    assert f"- best: psnr = {best['psnr'].iloc[0]:.6g} (trial #{best['number'].iloc[0]})" in text
    importance = text.split("## Parameter importance")[1]
    assert importance.index("| x |") < importance.index("| y |")  # x drives the metric
    assert Image.open(paths["importance"]).size[0] > 0


def test_report_main_covers_studies(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    study_dir = _toy_study(tmp_path)
    report.main(["--study", str(tmp_path)])  # a folder of studies
    out = capsys.readouterr().out
    assert "## Best trials" in out and str(study_dir / "study_report.md") in out
    with pytest.raises(FileNotFoundError, match="no study"):
        report.main(["--study", str(tmp_path / "nothing")])


@pytest.mark.slow
def test_set_level_fid_and_kid_per_pair_with_backbone_note(output: Path) -> None:
    """metrics.fid in the run's config.yaml: FID and KID per (task, method) over one sample per
    image against the ground truths, equal to experiments.metrics on the same sets; pairs
    without samples get n/a; a random backbone is marked as not comparable."""
    from experiments import metrics

    paths = report.write_report(output)  # no config.yaml: no set-level columns
    assert "fid" not in pd.read_csv(paths["csv"]).columns
    (output / "config.yaml").write_text("metrics: {fid: true, fid_random_backbone: true}\n")
    paths = report.write_report(output)
    csv = pd.read_csv(paths["csv"]).set_index(["task", "method"])
    for task in ("inpaint", "sr"):
        items = [
            torch.load(f, weights_only=True)
            for f in sorted((output / "samples" / task / "dps").glob("*.pt"))
        ]
        samples = torch.stack([item["selected"][0] for item in items])
        truths = torch.stack([item["ground_truth"] for item in items])
        row = csv.loc[(task, "dps")]
        assert row.set_images == 2
        assert row.fid == pytest.approx(metrics.fid(samples, truths, random_backbone=True))
        kid, kid_std = metrics.kid(samples, truths, random_backbone=True)
        assert (row.kid, row.kid_std) == pytest.approx((kid, kid_std))
        assert row.fid_backbone == metrics.fid_label(random_backbone=True)
    assert math.isnan(csv.loc[("sr", "daps"), "fid"])
    text = paths["md"].read_text(encoding="utf-8")
    header = next(line for line in text.splitlines() if line.startswith("| task"))
    assert "FID ↓ ‡" in header and "KID ↓ ‡" in header
    fid = csv.loc[("sr", "dps"), "fid"]
    assert f"| {fid:.2f} |" in text
    assert "randomly initialised Inception" in text
    assert "randomly initialised Inception" in paths["html"].read_text(encoding="utf-8")
