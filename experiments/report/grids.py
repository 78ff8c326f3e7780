"""Image grids: the sample rows of one image and the overview of a task and method."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

OVERVIEW_HEIGHT = 64  # small images are enlarged to at least this many pixels per row


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
