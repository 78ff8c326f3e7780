"""The PSNR-vs-NFE plot of a summary table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def psnr_vs_nfe_figure(summary: pd.DataFrame) -> Figure:
    """Mean PSNR (± std) against NFE (log x): one point per (task, method), colour by method,
    marker by task, named in the legend beside the axes (no per-point text, which overlapped
    where methods share an NFE). Rows without a positive NFE or a PSNR are left out."""
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
            alpha=0.8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("NFE (network evaluations per image)")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=c, marker="o", ls="", label=m) for m, c in colors.items()]
    handles += [Line2D([], [], color="k", marker=k, ls="", label=t) for t, k in markers.items()]
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def plot_psnr_vs_nfe(summary: pd.DataFrame, out_png: str | Path) -> Path:
    """``psnr_vs_nfe_figure`` saved as a PNG, its bounds grown to hold the legend."""
    fig = psnr_vs_nfe_figure(summary)
    fig.savefig(out_png, dpi=120, bbox_inches="tight")
    return Path(out_png)


# ---------------------------------------------------------------- image grids
