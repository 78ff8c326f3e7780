"""Summary tables: mean ± std per (task, method) and the Markdown table in the seeds' style
(rows task | method, columns PSNR ↑ | SSIM ↑ | LPIPS ↓, then the particles' coverage where the
runs recorded it, then the set-level FID ↓ | KID ↓ where the report computed them)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from experiments.mean_std import format_mean_std
from experiments.metrics import COVERAGE_COLUMNS

METRICS = ("psnr", "ssim", "lpips")
# Shown after METRICS when the rows hold a value: calibration of runs with several particles
# (the closer to the level, the better: no arrow).
OPTIONAL_METRICS = COVERAGE_COLUMNS
HEADERS = {
    "psnr": "PSNR ↑",
    "ssim": "SSIM ↑",
    "lpips": "LPIPS ↓",
    **{name: f"coverage {name.removeprefix('coverage_')}%" for name in COVERAGE_COLUMNS},
}
DIGITS = {"psnr": 2, "ssim": 3, "lpips": 3}
RANDOM_MARK = "†"
FID_RANDOM_MARK = "‡"


def summary_table(df: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean ± std per (task, method), in the order the pairs first appear.

    ``metrics`` defaults to ``METRICS`` and those of ``OPTIONAL_METRICS`` with a value in
    ``df`` (per image or as ``<metric>_mean``).

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
    if metrics is None:
        metrics = [*METRICS, *(m for m in OPTIONAL_METRICS if _has_values(df, m))]
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


def _has_values(df: pd.DataFrame, metric: str) -> bool:
    """True when a per-image ``metric`` column or a ``<metric>_mean`` column holds a number."""
    columns = [c for c in (metric, f"{metric}_mean") if c in df.columns]
    return any(pd.to_numeric(df[c], errors="coerce").notna().any() for c in columns)


def _shown(summary: pd.DataFrame, metrics: Sequence[str] | None) -> Sequence[str]:
    """``metrics``, or by default ``METRICS`` and the optional metrics ``summary`` holds."""
    if metrics is not None:
        return metrics
    return [*METRICS, *(m for m in OPTIONAL_METRICS if f"{m}_mean" in summary.columns)]


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
    return [format_mean_std(mean, std, digits) for mean, std in pairs]


def display_table(summary: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """The human-readable table: key columns, "mean ± std" per metric (by default those of
    ``summary_table``'s default), images, NFE, time."""
    random = _random_backbone(summary)
    table = summary.index.to_frame(index=False)
    for m in _shown(summary, metrics):
        header = HEADERS.get(m, m)
        if m == "lpips" and random:
            header = f"{header} {RANDOM_MARK}"
        table[header] = list(summary[m])
    if "fid" in summary.columns:  # set-level (experiments.report.set_metrics)
        mark = f" {FID_RANDOM_MARK}" if _random_fid(summary) else ""
        table[f"FID ↓{mark}"] = [_number(v, 2) for v in summary["fid"]]
        pairs = zip(summary["kid"], summary["kid_std"], strict=True)
        table[f"KID ↓{mark}"] = [format_mean_std(mean, std, 4) for mean, std in pairs]
    table["images (failed)"] = [
        f"{format_count(n)} ({format_count(f)})"
        for n, f in zip(summary["images"], summary["failed"], strict=True)
    ]
    table["NFE"] = [format_count(v) for v in summary["nfe"]]
    table["s / image"] = [_number(v, 2) for v in summary["seconds_per_image"]]
    return table


def format_count(value: float) -> str:
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


def _fid_backbones(summary: pd.DataFrame) -> list[str]:
    if "fid_backbone" not in summary:
        return []
    return [b for b in dict.fromkeys(summary["fid_backbone"].dropna()) if b]


def _random_fid(summary: pd.DataFrame) -> bool:
    return any("random" in b for b in _fid_backbones(summary))


def fid_note(summary: pd.DataFrame) -> str:
    """One line on the set-level FID and KID (what they compare, which Inception weights);
    flags a random backbone as not comparable. Empty where the report computed none."""
    if "fid" not in summary.columns:
        return ""
    backbones = ", ".join(_fid_backbones(summary))
    what = (
        "FID and KID (mean ± std over subsets) per task and method: one sample per image "
        "against the ground truths of the same images"
    )
    if _random_fid(summary):
        return (
            f"{FID_RANDOM_MARK} {what}, with a randomly initialised Inception ({backbones}): "
            "not comparable to published FID or KID."
        )
    return f"{what}; backbone: {backbones}."


def notes(summary: pd.DataFrame) -> list[str]:
    """The non-empty footnotes of the results table: LPIPS backbone, then FID and KID."""
    return [note for note in (lpips_note(summary), fid_note(summary)) if note]


def markdown_table(summary: pd.DataFrame, metrics: Sequence[str] | None = None) -> str:
    """The seeds' style: rows task | method, columns PSNR ↑ | SSIM ↑ | LPIPS ↓ (mean ± std),
    then images (failed), NFE and seconds per image; the backbones in footnotes."""
    table = display_table(summary, metrics)
    lines = [
        "| " + " | ".join(table.columns) + " |",
        "|" + "---|" * len(table.columns),
        *("| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)),
    ]
    return "\n\n".join(["\n".join(lines), *notes(summary)]) + "\n"


# ---------------------------------------------------------------- files
