"""Reports of finished runs: tables like the seeds' (task x method, mean ± std), image grids
and a PSNR-vs-NFE plot.

Inputs are the per-image ``results.csv`` of one or several output folders (layout written by
``experiments/runner.py``) or the final metrics the runner logs to MLflow. ``write_report``
assembles ``report.md`` from a list of sections (``_run_sections``); study reports (best
trials, parameter importance) are meant to add their own sections next to it.

Run: ``python -m experiments.report OUTPUT`` (or ``dipswarm report OUTPUT``).
"""

from __future__ import annotations

import argparse
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont

from search.tracking import PARENT_TAG

METRICS = ("psnr", "ssim", "lpips")
HEADERS = {"psnr": "PSNR ↑", "ssim": "SSIM ↑", "lpips": "LPIPS ↓"}
DIGITS = {"psnr": 2, "ssim": 3, "lpips": 3}
RANDOM_MARK = "†"
# final metrics the runner logs per child run (one child run per task and method)
MLFLOW_METRICS = (
    "psnr_mean",
    "psnr_std",
    "ssim_mean",
    "ssim_std",
    "lpips_mean",
    "lpips_std",
    "nfe",
    "seconds_per_image",
    "images",
    "failed",
)
STRING_COLUMNS = ("task", "method", "image", "status", "error", "lpips_backbone")
OVERVIEW_HEIGHT = 64  # small images are enlarged to at least this many pixels per row
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


# ---------------------------------------------------------------- loading


def load_results(output: str | Path) -> pd.DataFrame:
    """Per-image rows of one output folder's ``results.csv`` (metrics NaN on failed rows)."""
    path = Path(output) / "results.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no results.csv in {Path(output)} (has a run written there?)")
    head = pd.read_csv(path, nrows=0).columns
    dtypes = {name: str for name in STRING_COLUMNS if name in head}
    return pd.read_csv(path, dtype=dtypes)


def load_many(outputs: Sequence[str | Path]) -> pd.DataFrame:
    """Rows of several output folders, with a leading ``run`` column naming the folder.

    The folder's name labels its rows; full paths are used when two names coincide.
    """
    paths = [Path(o) for o in outputs]
    labels = [p.name for p in paths]
    if len(set(labels)) < len(labels):
        labels = [str(p) for p in paths]
    frames = [load_results(p).assign(run=label) for p, label in zip(paths, labels, strict=True)]
    df = pd.concat(frames, ignore_index=True)
    return df[["run", *[c for c in df.columns if c != "run"]]]


def load_mlflow(tracking_uri: str, experiment: str) -> pd.DataFrame:
    """One row per finished child run (task, method) of ``experiment`` with its final metrics.

    Child runs are runs with a parent run; ``run`` is the parent run's name, so that a
    repeated experiment stays apart. Children without the ``task`` and ``method`` params
    (for instance tuning trials) and children not FINISHED are left out.
    """
    from mlflow.tracking import MlflowClient

    _check_sqlite_exists(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} at {tracking_uri}")
    runs = _all_runs(client, found.experiment_id)
    parent_names = {r.info.run_id: r.info.run_name for r in runs if PARENT_TAG not in r.data.tags}
    rows = [_mlflow_row(run, parent_names) for run in runs if _is_result_run(run)]
    columns = ["run", "task", "method", *MLFLOW_METRICS, "lpips_backbone", "run_id"]
    return pd.DataFrame(rows, columns=columns)


def _check_sqlite_exists(tracking_uri: str) -> None:
    """Refuse a missing SQLite store: MLflow would silently create an empty one."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix) and not Path(tracking_uri[len(prefix) :]).is_file():
        raise FileNotFoundError(f"no MLflow database at {tracking_uri}")


def _all_runs(client: object, experiment_id: str) -> list:
    """Every active run of the experiment, oldest first (search_runs is paged)."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            order_by=["attributes.start_time ASC"],
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _is_result_run(run: object) -> bool:
    """A finished child run that carries the runner's ``task`` and ``method`` params."""
    params = run.data.params
    return (
        PARENT_TAG in run.data.tags
        and run.info.status == "FINISHED"
        and "task" in params
        and "method" in params
    )


def _mlflow_row(run: object, parent_names: dict[str, str]) -> dict:
    """The table row of one child run: params, final metrics (NaN where not logged)."""
    parent = run.data.tags[PARENT_TAG]
    params, metrics = run.data.params, run.data.metrics
    row = {
        "run": parent_names.get(parent, parent),
        "task": params["task"],
        "method": params["method"],
        "lpips_backbone": params.get("lpips_backbone"),
        "run_id": run.info.run_id,
    }
    row.update({name: metrics.get(name, math.nan) for name in MLFLOW_METRICS})
    return row


# ---------------------------------------------------------------- tables


def summary_table(df: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Mean ± std per (task, method), in the order the pairs first appear.

    ``df`` holds per-image rows (``load_results``) or rows already aggregated per task and
    method (``load_mlflow``: ``psnr_mean``, ``psnr_std``, ...). Failed images are left out of
    the means and counted in ``failed``; ``images`` counts the finished images behind the
    means (as the runner logs to MLflow). Std is the sample std (ddof=1), NaN for a single
    image. A ``run`` column with several values joins the index.
    Columns: per metric a "mean ± std" string, then ``<metric>_mean``/``<metric>_std``,
    ``images``, ``failed``, ``nfe`` and ``seconds_per_image`` (means over finished images),
    and ``lpips_backbone`` where known.
    """
    keys = _group_keys(df)
    if _is_aggregated(df, metrics):
        numeric = _from_aggregated(df, keys, metrics)
    else:
        numeric = _aggregate(df, keys, metrics)
    labels = {m: _labels(numeric, m) for m in metrics}
    return pd.concat([pd.DataFrame(labels, index=numeric.index), numeric], axis=1)


def _group_keys(df: pd.DataFrame) -> list[str]:
    """``task``, ``method``, and ``run`` first when the rows come from several runs."""
    missing = {"task", "method"} - set(df.columns)
    if missing:
        raise ValueError(f"report: the results lack the column(s) {sorted(missing)}")
    several_runs = "run" in df.columns and df["run"].nunique() > 1
    return ["run", "task", "method"] if several_runs else ["task", "method"]


def _is_aggregated(df: pd.DataFrame, metrics: Sequence[str]) -> bool:
    """True for rows that already hold ``<metric>_mean`` columns and no per-image metrics."""
    has_means = any(f"{m}_mean" in df.columns for m in metrics)
    return has_means and not any(m in df.columns for m in metrics)


def _numeric_columns(metrics: Sequence[str]) -> list[str]:
    stats = [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
    return [*stats, "images", "failed", "nfe", "seconds_per_image", "lpips_backbone"]


def _aggregate(df: pd.DataFrame, keys: list[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Per-image rows -> one numeric row per group, failed rows counted but not averaged."""
    missing = {"status", "nfe", "seconds", *metrics} - set(df.columns)
    if missing:
        raise ValueError(f"report: the per-image results lack the column(s) {sorted(missing)}")
    rows = {key: _aggregate_group(group, metrics) for key, group in df.groupby(keys, sort=False)}
    index = pd.MultiIndex.from_tuples(list(rows), names=keys)
    return pd.DataFrame(list(rows.values()), index=index, columns=_numeric_columns(metrics))


def _aggregate_group(group: pd.DataFrame, metrics: Sequence[str]) -> dict:
    ok = group[group["status"] == "ok"]
    row: dict = {}
    for m in metrics:
        values = pd.to_numeric(ok[m], errors="coerce")
        row[f"{m}_mean"] = values.mean()
        row[f"{m}_std"] = values.std(ddof=1)
    backbones = group.get("lpips_backbone", pd.Series(dtype=object)).dropna()
    row.update(
        images=len(ok),
        failed=len(group) - len(ok),
        nfe=pd.to_numeric(ok["nfe"], errors="coerce").mean(),
        seconds_per_image=pd.to_numeric(ok["seconds"], errors="coerce").mean(),
        lpips_backbone=backbones.iloc[0] if not backbones.empty else None,
    )
    return row


def _from_aggregated(df: pd.DataFrame, keys: list[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Rows already aggregated (MLflow): index them; metrics not logged become NaN."""
    numeric = df.set_index(keys).reindex(columns=_numeric_columns(metrics))
    return numeric.astype({c: float for c in numeric.columns if c != "lpips_backbone"})


def _labels(numeric: pd.DataFrame, metric: str) -> list[str]:
    digits = DIGITS.get(metric, 3)
    pairs = zip(numeric[f"{metric}_mean"], numeric[f"{metric}_std"], strict=True)
    return [_mean_std(mean, std, digits) for mean, std in pairs]


def _mean_std(mean: float, std: float, digits: int) -> str:
    """Mean ± std as text ("29.07 ± 1.23"); the mean alone without a std, "n/a" without a mean."""
    if pd.isna(mean):
        return "n/a"
    if pd.isna(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def display_table(summary: pd.DataFrame, metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """The human-readable table: key columns, "mean ± std" per metric, images, NFE, time."""
    random = _random_backbone(summary)
    table = summary.index.to_frame(index=False)
    for m in metrics:
        header = HEADERS.get(m, m)
        if m == "lpips" and random:
            header = f"{header} {RANDOM_MARK}"
        table[header] = list(summary[m])
    table["images (failed)"] = [
        f"{_count(n)} ({_count(f)})"
        for n, f in zip(summary["images"], summary["failed"], strict=True)
    ]
    table["NFE"] = [_count(v) for v in summary["nfe"]]
    table["s / image"] = [_number(v, 2) for v in summary["seconds_per_image"]]
    return table


def _count(value: float) -> str:
    """A count or NFE: integral values without decimals."""
    if pd.isna(value):
        return "n/a"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _number(value: float, digits: int) -> str:
    return "n/a" if pd.isna(value) else f"{value:.{digits}f}"


def _backbones(summary: pd.DataFrame) -> list[str]:
    """The distinct LPIPS backbone labels, in order (empty where LPIPS was not computed)."""
    if "lpips_backbone" not in summary:
        return []
    return [b for b in dict.fromkeys(summary["lpips_backbone"].dropna()) if b]


def _random_backbone(summary: pd.DataFrame) -> bool:
    return any("random" in b for b in _backbones(summary))


def lpips_note(summary: pd.DataFrame) -> str:
    """One line naming the LPIPS backbone(s); flags a random backbone as not comparable."""
    backbones = ", ".join(_backbones(summary))
    if _random_backbone(summary):
        return (
            f"{RANDOM_MARK} LPIPS computed with a randomly initialised backbone ({backbones}): "
            "not comparable to published LPIPS numbers."
        )
    return f"LPIPS backbone: {backbones}." if backbones else ""


def markdown_table(summary: pd.DataFrame, metrics: Sequence[str] = METRICS) -> str:
    """The seeds' style: rows task | method, columns PSNR ↑ | SSIM ↑ | LPIPS ↓ (mean ± std),
    then images (failed), NFE and seconds per image; the LPIPS backbone in a footnote."""
    table = display_table(summary, metrics)
    lines = [
        "| " + " | ".join(table.columns) + " |",
        "|" + "---|" * len(table.columns),
        *("| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)),
    ]
    note = lpips_note(summary)
    return "\n".join(lines) + (f"\n\n{note}" if note else "") + "\n"


# ---------------------------------------------------------------- files


def write_report(output: str | Path, df: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.csv``, ``report.html`` and ``psnr_vs_nfe.png`` (and
    ``overview.png`` when the folder has samples) into ``output``; ``df`` defaults to the
    folder's own results. Returns the paths by kind: md, csv, html, plot (and overview)."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    results = load_results(out) if df is None else df
    summary = summary_table(results)
    paths = {name: out / f"report.{name}" for name in ("md", "csv", "html")}
    summary.reset_index().to_csv(paths["csv"], index=False)
    paths["plot"] = plot_psnr_vs_nfe(summary, out / "psnr_vs_nfe.png")
    if any((out / "samples").glob("*/*/*.pt")):
        paths["overview"] = overview_grid(out)
    paths["md"].write_text(_markdown_document(out, _run_sections(summary, paths)), "utf-8")
    paths["html"].write_text(_html_document(out, summary, paths), "utf-8")
    return paths


def _run_sections(summary: pd.DataFrame, paths: dict[str, Path]) -> list[tuple[str, str]]:
    """(title, Markdown body) sections about the runs: table, plot, overview grid."""
    sections = [("Results", markdown_table(summary))]
    sections.append(("PSNR vs NFE", f"![PSNR vs NFE]({paths['plot'].name})\n"))
    if "overview" in paths:
        body = (
            "First image of each task and method: ground truth | measurement (where it is an "
            "image) | samples | posterior mean | posterior std (scaled to its max).\n\n"
            f"![overview]({paths['overview'].name})\n"
        )
        sections.append(("Samples", body))
    return sections


def _markdown_document(out: Path, sections: list[tuple[str, str]]) -> str:
    parts = [f"# Report: {out.name}\n"]
    parts += [f"## {title}\n\n{body}" for title, body in sections]
    return "\n".join(parts)


def _html_document(out: Path, summary: pd.DataFrame, paths: dict[str, Path]) -> str:
    """A standalone HTML page: the table, the LPIPS note and the figures."""
    title = html.escape(f"Report: {out.name}")
    body = [f"<h1>{title}</h1>", display_table(summary).to_html(index=False, escape=True)]
    note = lpips_note(summary)
    if note:
        body.append(f"<p>{html.escape(note)}</p>")
    body += [f'<img src="{paths[k].name}" alt="{k}">' for k in ("plot", "overview") if k in paths]
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
        "<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def plot_psnr_vs_nfe(summary: pd.DataFrame, out_png: str | Path) -> Path:
    """Mean PSNR (± std) against NFE (log x): one labelled point per (task, method), color by
    method, marker by task. Rows without a positive NFE or a PSNR are left out."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    points = summary.reset_index()
    points = points[(points["nfe"] > 0) & points["psnr_mean"].notna()]
    methods = list(dict.fromkeys(points["method"]))
    tasks = list(dict.fromkeys(points["task"]))
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    markers = {t: MARKERS[i % len(MARKERS)] for i, t in enumerate(tasks)}
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for row in points.itertuples(index=False):
        std = 0.0 if pd.isna(row.psnr_std) else row.psnr_std
        ax.errorbar(
            row.nfe,
            row.psnr_mean,
            yerr=std,
            color=colors[row.method],
            marker=markers[row.task],
            capsize=3,
        )
        ax.annotate(
            row.method,
            (row.nfe, row.psnr_mean),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
        )
    ax.set_xscale("log")
    ax.set_xlabel("NFE (network evaluations per image)")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=c, marker="o", ls="", label=m) for m, c in colors.items()]
    handles += [Line2D([], [], color="k", marker=k, ls="", label=t) for t, k in markers.items()]
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(out_png, dpi=120)
    return Path(out_png)


# ---------------------------------------------------------------- image grids


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> [0, 1], clipped (the metrics' mapping)."""
    return ((x.detach().to(torch.float64) + 1) / 2).clamp(0, 1)


def _panels(sample: dict[str, torch.Tensor], max_samples: int) -> list[torch.Tensor]:
    """ground truth | measurement (if image-shaped) | samples | mean | std/max, in [0, 1]."""
    truth = sample["ground_truth"]
    panels = [_to_unit(truth)]
    measurement = sample.get("measurement")
    if measurement is not None and tuple(measurement.shape) == tuple(truth.shape):
        panels.append(_to_unit(measurement))
    panels += [_to_unit(s) for s in sample["samples"][:max_samples]]
    panels.append(_to_unit(sample["mean"]))
    std = sample["std"].detach().to(torch.float64)
    peak = std.max()
    panels.append(std / peak if peak > 0 else torch.zeros_like(std))
    return panels


def _row_image(panels: list[torch.Tensor]) -> Image.Image:
    """Panels (C, H, W) in [0, 1] side by side, no gaps, as an 8-bit L (C=1) or RGB (C=3)."""
    channels = panels[0].shape[0]
    if channels not in (1, 3):
        raise ValueError(f"image grid: needs 1 or 3 channels, got {channels}")
    row = torch.cat(panels, dim=-1)
    pixels = (row * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels)


def _load_sample(sample_file: str | Path) -> dict[str, torch.Tensor]:
    return torch.load(sample_file, map_location="cpu", weights_only=True)


def image_grid(sample_file: str | Path, out_png: str | Path, max_samples: int = 4) -> Path:
    """One PNG row from ``samples/<task>/<method>/<image>.pt``: ground truth | measurement
    (only where it has the image's shape) | up to ``max_samples`` samples | posterior mean |
    posterior std scaled to [0, 1] by its max. Pixels are round(255 * clip((x + 1) / 2))."""
    image = _row_image(_panels(_load_sample(sample_file), max_samples))
    image.save(out_png)
    return Path(out_png)


def _enlarged(row: Image.Image) -> Image.Image:
    """An RGB copy enlarged by an integer factor (nearest) to at least OVERVIEW_HEIGHT pixels."""
    scale = max(1, math.ceil(OVERVIEW_HEIGHT / row.height))
    return row.convert("RGB").resize((row.width * scale, row.height * scale), Image.NEAREST)


def overview_grid(
    output: str | Path, out_png: str | Path | None = None, max_samples: int = 4
) -> Path:
    """One labelled row per (task, method) from its first image (by name), stacked
    vertically and enlarged for small images; written to ``OUTPUT/overview.png`` by default."""
    out = Path(output)
    files = [
        sorted(d.glob("*.pt"))[0]
        for d in sorted((out / "samples").glob("*/*/"))
        if any(d.glob("*.pt"))
    ]
    if not files:
        raise FileNotFoundError(f"no samples/<task>/<method>/<image>.pt under {out}")
    rows = [_enlarged(_row_image(_panels(_load_sample(f), max_samples))) for f in files]
    labels = [f"{f.parent.parent.name} / {f.parent.name}" for f in files]
    font = ImageFont.load_default()
    margin = 8 + max(math.ceil(font.getlength(label)) for label in labels)
    width = margin + max(r.width for r in rows)
    canvas = Image.new("RGB", (width, sum(r.height for r in rows)), "white")
    draw = ImageDraw.Draw(canvas)
    top = 0
    for row, label in zip(rows, labels, strict=True):
        canvas.paste(row, (margin, top))
        draw.text((4, top + row.height // 2), label, fill="black", font=font, anchor="lm")
        top += row.height
    target = Path(out_png) if out_png is not None else out / "overview.png"
    canvas.save(target)
    return target


# ---------------------------------------------------------------- studies (dipswarm tune)

STUDY_FILE = "search_study.json"  # written by search.tune into each study folder
STUDY_STATUS = {
    "COMPLETE": "completed",
    "PRUNED": "stopped",
    "FAIL": "failed",
    "RUNNING": "unfinished",
    "WAITING": "unfinished",
}
TRIAL_ATTR = "tune_trial_id"  # search.backend.TRIAL_ATTR (importing it would import Ray)


def find_studies(path: str | Path) -> list[Path]:
    """Study folders at ``path``: itself if it holds a study, else its sub-folders that do."""
    folder = Path(path)
    if (folder / STUDY_FILE).is_file():
        return [folder]
    found = sorted(p.parent for p in folder.glob(f"*/{STUDY_FILE}"))
    if not found:
        raise FileNotFoundError(f"no study ({STUDY_FILE}) in {folder} or its sub-folders")
    return found


def load_study(study_dir: str | Path) -> tuple[dict, Any]:
    """A study folder's record (``search_study.json``) and its Optuna study (journal)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    meta = json.loads((Path(study_dir) / STUDY_FILE).read_text())
    storage = JournalStorage(JournalFileBackend(meta["optuna_journal"]))
    return meta, optuna.load_study(study_name=meta["study_name"], storage=storage)


def study_trials(study: Any, metric: str) -> pd.DataFrame:
    """One row per trial: number, Tune trial id, status (completed, stopped early, failed,
    unfinished), the metric (the last low-fidelity value for stopped trials), steps reached,
    seconds, and the searched parameters."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        steps = max(trial.intermediate_values, default=math.nan)
        if trial.value is not None:
            value = trial.value
        elif trial.intermediate_values and trial.state.name == "PRUNED":
            value = trial.intermediate_values[steps]
        else:
            value = math.nan
        seconds = trial.duration.total_seconds() if trial.duration is not None else math.nan
        rows.append(
            {
                "number": trial.number,
                "trial_id": trial.user_attrs.get(TRIAL_ATTR, ""),
                "status": STUDY_STATUS.get(trial.state.name, trial.state.name.lower()),
                metric: value,
                "steps": steps,
                "seconds": seconds,
                **trial.params,
            }
        )
    return pd.DataFrame(rows)


def best_trials_table(trials: pd.DataFrame, metric: str, mode: str, top: int = 10) -> pd.DataFrame:
    """The ``top`` completed trials, best first (stopped and failed trials are left out)."""
    done = trials[trials["status"] == "completed"]
    return done.sort_values(metric, ascending=mode == "min", kind="stable").head(top)


def param_importances(study: Any) -> dict[str, float]:
    """fANOVA importance of each searched parameter over the completed trials (seeded);
    empty when there are too few completed trials or nothing varies."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return {}
    try:
        return dict(get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0)))
    except (ValueError, RuntimeError):  # e.g. every completed trial has the same parameters
        return {}


def plot_param_importance(
    importances: dict[str, float], out_png: str | Path, title: str = ""
) -> Path:
    """Horizontal bars of the parameter importances, the most important on top."""
    from matplotlib.figure import Figure

    names = list(importances)[::-1]
    fig = Figure(figsize=(6, 0.45 * len(names) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color="C0")
    ax.set_xlabel("importance (fANOVA, completed trials)")
    ax.set_xlim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    fig.savefig(out_png, dpi=120)
    return Path(out_png)


def write_study_report(
    study: str | Path | Any, out: str | Path | None = None, top: int = 10
) -> dict[str, Path]:
    """Write ``study_report.md``, ``study_trials.csv``, ``best_trials.csv`` and (with two or
    more completed trials) ``param_importance.png`` for a study of ``dipswarm tune``.

    ``study`` is a study folder (``STORAGE/NAME``, holding ``search_study.json``) or a
    ``search.StudyResult``; ``out`` defaults to the study folder. Returns the paths by kind:
    md, trials, best (and importance).
    """
    folder = Path(getattr(study, "experiment_path", study))
    target = Path(out) if out is not None else folder
    target.mkdir(parents=True, exist_ok=True)
    meta, optuna_study = load_study(folder)
    metric, mode = meta["metric"], meta["mode"]
    trials = study_trials(optuna_study, metric)
    best = best_trials_table(trials, metric, mode, top) if len(trials) else trials
    paths = {"md": target / "study_report.md", "trials": target / "study_trials.csv"}
    paths["best"] = target / "best_trials.csv"
    trials.to_csv(paths["trials"], index=False)
    best.to_csv(paths["best"], index=False)
    importances = param_importances(optuna_study)
    if importances:
        paths["importance"] = plot_param_importance(
            importances, target / "param_importance.png", f"{meta['study_name']}: {metric}"
        )
    sections = _study_sections(meta, trials, best, importances, paths)
    paths["md"].write_text(_markdown_document(folder, sections), "utf-8")
    return paths


def _study_sections(
    meta: dict,
    trials: pd.DataFrame,
    best: pd.DataFrame,
    importances: dict[str, float],
    paths: dict[str, Path],
) -> list[tuple[str, str]]:
    """(title, Markdown body) sections of a study report."""
    metric, mode = meta["metric"], meta["mode"]
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    asha = meta.get("asha") or "off"
    lines = [
        f"- study: {meta['study_name']} ({meta['experiment_path']})",
        f"- metric: {metric} ({mode}), sampler {meta['sampler']}, seed {meta['seed']}, "
        f"ASHA: {asha}",
        f"- trials: {len(trials)} of {meta['num_samples']} ("
        + ", ".join(f"{counts[s]} {s}" for s in sorted(counts))
        + f"); compute {_count(trials['steps'].sum() if len(trials) else 0)} steps",
    ]
    if len(best):
        first = best.iloc[0]
        lines.append(f"- best: {metric} = {first[metric]:.6g} (trial #{first['number']})")
    sections = [("Study", "\n".join(lines) + "\n")]
    sections.append(("Best trials", _frame_markdown(best) if len(best) else "none completed\n"))
    if importances:
        rows = pd.DataFrame({"parameter": list(importances), "importance": importances.values()})
        body = f"![parameter importance]({paths['importance'].name})\n\n" + _frame_markdown(rows)
    else:
        body = "needs at least two completed trials with different parameters\n"
    sections.append(("Parameter importance", body))
    space = "\n".join(f"- {name}: `{dim}`" for name, dim in meta.get("space", {}).items())
    sections.append(("Search space", space + "\n"))
    return sections


def _frame_markdown(df: pd.DataFrame) -> str:
    """A plain Markdown table; floats with 4 significant digits."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "n/a" if math.isnan(value) else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``dipswarm report``."""
    parser = argparse.ArgumentParser(prog="dipswarm report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "outputs", nargs="*", help="output folder(s) of finished runs, or study folder(s)"
    )
    parser.add_argument("--out", help="where to write the report (default: the one OUTPUT)")
    parser.add_argument("--experiment", help="read this MLflow experiment instead of results.csv")
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: sqlite OUT/mlflow.db)"
    )
    parser.add_argument(
        "--study",
        action="append",
        metavar="DIR",
        help="also report a study of dipswarm tune: its folder, or a folder of studies "
        "(repeatable; written into each study folder)",
    )
    return parser


def _inputs(args: argparse.Namespace) -> tuple[Path, pd.DataFrame | None]:
    """(report folder, rows or None to read the folder's own results) from the arguments."""
    if args.out is None and len(args.outputs) != 1:
        raise SystemExit("dipswarm report: give one OUTPUT folder, or --out with several")
    out = Path(args.out if args.out is not None else args.outputs[0])
    if args.experiment:
        uri = args.tracking_uri or f"sqlite:///{out.resolve()}/mlflow.db"
        return out, load_mlflow(uri, args.experiment)
    if len(args.outputs) > 1 or (args.outputs and Path(args.outputs[0]) != out):
        return out, load_many(args.outputs)
    return out, None


def _holds_study(folder: str) -> bool:
    """Whether ``folder`` is a study of dipswarm tune (or holds some) rather than a run."""
    if (Path(folder) / "results.csv").is_file():
        return False
    try:
        return bool(find_studies(folder))
    except FileNotFoundError:
        return False


def main(argv: list[str] | None = None) -> None:
    """Write the report of the given run(s) and study(ies) and print their tables."""
    args = build_parser().parse_args(argv)
    studies = [o for o in args.outputs if _holds_study(o)]  # a study given as an OUTPUT
    args.outputs = [o for o in args.outputs if o not in studies]
    args.study = [*(args.study or []), *studies]
    for folder in args.study:
        for study_dir in find_studies(folder):
            study_paths = write_study_report(study_dir)
            print(study_paths["md"].read_text(encoding="utf-8"))
            print("wrote " + ", ".join(str(p) for p in study_paths.values()))
    if args.study and not args.outputs and args.out is None:
        return
    out, df = _inputs(args)
    paths = write_report(out, df)
    print(paths["md"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
