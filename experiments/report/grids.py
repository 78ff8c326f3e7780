"""Image grids: the sample rows of one image and the overview of a task and method."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

OVERVIEW_HEIGHT = 64  # small images are enlarged to at least this many pixels per row
OVERVIEW_HEADER = 16  # pixels of the column-label line above the rows
_COLUMN_ORDER = ("truth", "measurement", "sample", "mean", "std")  # overview column order


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> [0, 1], clipped (the metrics' mapping)."""
    return ((x.detach().to(torch.float64) + 1) / 2).clamp(0, 1)


def _labelled_panels(
    sample: dict[str, torch.Tensor], max_samples: int
) -> list[tuple[str, torch.Tensor]]:
    """(column label, panel in [0, 1]): ground truth | measurement (if image-shaped) |
    samples | mean | std/max."""
    truth = sample["ground_truth"]
    panels = [("truth", _to_unit(truth))]
    measurement = sample.get("measurement")
    if measurement is not None and tuple(measurement.shape) == tuple(truth.shape):
        panels.append(("measurement", _to_unit(measurement)))
    samples = sample["samples"][:max_samples]
    panels += [(f"sample {i + 1}", _to_unit(s)) for i, s in enumerate(samples)]
    panels.append(("mean", _to_unit(sample["mean"])))
    std = sample["std"].detach().to(torch.float64)
    peak = std.max()
    panels.append(("std / max", std / peak if peak > 0 else torch.zeros_like(std)))
    return panels


def _panels(sample: dict[str, torch.Tensor], max_samples: int) -> list[torch.Tensor]:
    """The panels of ``_labelled_panels`` without their labels."""
    return [panel for _, panel in _labelled_panels(sample, max_samples)]


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
    """One labelled row per (task, method) from its first image (by name) under a header
    naming the columns, every row on the same columns, enlarged for small images; written
    to ``OUTPUT/overview.png`` by default."""
    out = Path(output)
    files = [
        sorted(d.glob("*.pt"))[0]
        for d in sorted((out / "samples").glob("*/*/"))
        if any(d.glob("*.pt"))
    ]
    if not files:
        raise FileNotFoundError(f"no samples/<task>/<method>/<image>.pt under {out}")
    cells = [dict(_labelled_panels(_load_sample(f), max_samples)) for f in files]
    # one column per label in a fixed order, so every row has the same width: a method with
    # fewer samples (or a task whose measurement is not image-shaped) leaves its cells blank
    columns = list(dict.fromkeys(label for row in cells for label in row))
    columns.sort(key=lambda c: (_COLUMN_ORDER.index(c.split()[0]), len(c), c))
    images = [{k: _enlarged(_row_image([p])) for k, p in row.items()} for row in cells]
    cell_w = max(i.width for row in images for i in row.values())
    cell_h = max(i.height for row in images for i in row.values())
    labels = [f"{f.parent.parent.name} / {f.parent.name}" for f in files]
    font = ImageFont.load_default()
    margin = 8 + max(math.ceil(font.getlength(label)) for label in labels)
    header = OVERVIEW_HEADER
    width, height = margin + cell_w * len(columns), header + cell_h * len(images)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, column in enumerate(columns):
        centre = margin + j * cell_w + cell_w // 2
        draw.text((centre, header // 2), column, fill="black", font=font, anchor="mm")
    for i, (row, label) in enumerate(zip(images, labels, strict=True)):
        top = header + i * cell_h
        for j, column in enumerate(columns):
            if column in row:
                canvas.paste(row[column], (margin + j * cell_w, top))
        draw.text((4, top + cell_h // 2), label, fill="black", font=font, anchor="lm")
    target = Path(out_png) if out_png is not None else out / "overview.png"
    canvas.save(target)
    return target


# ---------------------------------------------------------------- studies (dipswarm tune)
