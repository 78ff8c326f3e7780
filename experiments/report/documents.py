"""``report.md``, ``report.csv`` and ``report.html`` of finished runs, assembled from a list of
sections (``run_sections``; study reports add their own)."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from experiments.report.grids import overview_grid
from experiments.report.load import load_results
from experiments.report.plots import plot_psnr_vs_nfe
from experiments.report.set_metrics import run_metrics_settings, set_metrics
from experiments.report.tables import display_table, markdown_table, notes, summary_table


def write_report(output: str | Path, df: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.csv``, ``report.html`` and ``psnr_vs_nfe.png`` (and
    ``overview.png`` when the folder has samples) into ``output``; ``df`` defaults to the
    folder's own results. Returns the paths by kind: md, csv, html, plot (and overview).

    With the folder's own results and ``metrics.fid`` in its ``config.yaml``, the summary gains
    the set-level FID and KID of each (task, method) (``set_metrics``)."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    results = load_results(out) if df is None else df
    summary = summary_table(results)
    settings = run_metrics_settings(out) if df is None else None
    if settings is not None and settings.fid:
        summary = summary.join(set_metrics(out, settings))
    paths = {name: out / f"report.{name}" for name in ("md", "csv", "html")}
    summary.reset_index().to_csv(paths["csv"], index=False)
    paths["plot"] = plot_psnr_vs_nfe(summary, out / "psnr_vs_nfe.png")
    if any((out / "samples").glob("*/*/*.pt")):
        paths["overview"] = overview_grid(out)
    paths["md"].write_text(markdown_document(out, run_sections(summary, paths)), "utf-8")
    paths["html"].write_text(_html_document(out, summary, paths), "utf-8")
    return paths


def run_sections(summary: pd.DataFrame, paths: dict[str, Path]) -> list[tuple[str, str]]:
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


def markdown_document(out: Path, sections: list[tuple[str, str]]) -> str:
    parts = [f"# Report: {out.name}\n"]
    parts += [f"## {title}\n\n{body}" for title, body in sections]
    return "\n".join(parts)


def _html_document(out: Path, summary: pd.DataFrame, paths: dict[str, Path]) -> str:
    """A standalone HTML page: the table, the backbone notes and the figures."""
    title = html.escape(f"Report: {out.name}")
    body = [f"<h1>{title}</h1>", display_table(summary).to_html(index=False, escape=True)]
    body += [f"<p>{html.escape(note)}</p>" for note in notes(summary)]
    body += [f'<img src="{paths[k].name}" alt="{k}">' for k in ("plot", "overview") if k in paths]
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
        "<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
