"""Report layout (issue 18 item 14 c): the overview grid labels its columns and puts every row
on the same columns; the PSNR-vs-NFE plot names methods in its legend, not in overlapping text
beside points that share an NFE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from experiments import report
from experiments.report.grids import OVERVIEW_HEADER
from experiments.report.plots import psnr_vs_nfe_figure

SHAPE = (1, 8, 8)


def _sample(gen: torch.Generator, particles: int, measurement: tuple[int, ...]) -> dict:
    samples = torch.rand(particles, *SHAPE, generator=gen) * 2 - 1
    return {
        "ground_truth": torch.rand(SHAPE, generator=gen) * 2 - 1,
        "measurement": torch.rand(measurement, generator=gen) * 2 - 1,
        "samples": samples,
        "mean": samples.mean(0),
        "std": samples.std(0) if particles > 1 else torch.zeros(SHAPE),
    }


def test_overview_rows_share_labelled_columns(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    # box/ensemble: image-shaped y, 4 particles; sr/single: small y (no panel), 1 particle
    pairs = {("box", "ensemble"): (4, SHAPE), ("sr", "single"): (1, (1, 2, 2))}
    means = {}
    for (task, method), (particles, y_shape) in pairs.items():
        folder = tmp_path / "samples" / task / method
        folder.mkdir(parents=True)
        sample = _sample(gen, particles, y_shape)
        torch.save(sample, folder / "test_0000.pt")
        means[task] = np.rint(((sample["mean"][0].double() + 1) / 2).clamp(0, 1).numpy() * 255)
    png = report.overview_grid(tmp_path)
    scale = report.OVERVIEW_HEIGHT // 8
    cell = 8 * scale
    columns = 1 + 1 + 4 + 1 + 1  # truth, measurement, samples 1..4, mean, std
    with Image.open(png) as image:
        grid = np.asarray(image.convert("L"))
    assert grid.shape == (OVERVIEW_HEADER + 2 * cell, grid.shape[1])
    left = grid.shape[1] - columns * cell  # the label margin
    for j in range(columns):  # a label above every column
        assert (grid[:OVERVIEW_HEADER, left + j * cell : left + (j + 1) * cell] < 128).any(), j
    mean_x = left + 6 * cell  # the mean column, for both rows
    for i, task in enumerate(("box", "sr")):
        top = OVERVIEW_HEADER + i * cell
        got = grid[top : top + cell : scale, mean_x : mean_x + cell : scale]
        assert got.tolist() == means[task].tolist(), task
    # the single chain's missing measurement and samples 2..4 are blank cells
    assert (grid[OVERVIEW_HEADER + cell :, left + cell : left + 2 * cell] == 255).all()
    assert (grid[OVERVIEW_HEADER + cell :, left + 3 * cell : left + 6 * cell] == 255).all()


def test_psnr_vs_nfe_names_methods_in_the_legend_only(tmp_path: Path) -> None:
    summary = pd.DataFrame(
        {
            "task": ["sr", "sr", "sr"],
            "method": ["daps_one_chain", "daps_four_particles", "daps_repulsion"],
            "nfe": [500.0, 500.0, 500.0],  # the same NFE: text labels would overlap
            "psnr_mean": [20.0, 20.1, 20.2],
            "psnr_std": [1.0, 1.0, 1.0],
        }
    ).set_index(["task", "method"])
    fig = psnr_vs_nfe_figure(summary)
    (ax,) = fig.axes
    assert len(ax.texts) == 0
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [*summary.index.get_level_values("method"), "sr"]
    png = report.plot_psnr_vs_nfe(summary, tmp_path / "plot.png")
    with Image.open(png) as image:  # the legend outside the axes is inside the saved image
        assert image.width > 7 * 120
