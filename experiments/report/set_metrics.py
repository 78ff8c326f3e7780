"""Set-level FID and KID of one run, per (task, method): one sample per image (the first of the
selected samples, as the seeds' tables score one reconstruction per measurement) against the
ground truths of the same images, read from ``samples/<task>/<method>/<image>.pt``."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch

from experiments import metrics
from experiments.config import MetricsConfig, build_section, expand, read_yaml

COLUMNS = ("fid", "kid", "kid_std", "set_images", "fid_backbone")


def run_metrics_settings(output: str | Path) -> MetricsConfig | None:
    """The ``metrics`` section of the run's ``config.yaml`` (validated), None without one."""
    path = Path(output) / "config.yaml"
    if not path.is_file():
        return None
    return build_section(MetricsConfig, read_yaml(path).get("metrics", {}), "metrics")


def set_metrics(
    output: str | Path, settings: MetricsConfig, device: str | None = None
) -> pd.DataFrame:
    """FID, KID (mean and std over subsets), the images behind them and the backbone label,
    one row per (task, method) folder of ``output/samples`` (index ``task``, ``method``).
    Pairs with fewer than two images get NaN. ``device`` defaults to CUDA when there is one."""
    run_device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    weights = None if settings.fid_weights is None else expand(settings.fid_weights)
    label = metrics.fid_label(settings.fid_random_backbone)
    rows, index = [], []
    for folder in sorted(Path(output, "samples").glob("*/*/")):
        files = sorted(folder.glob("*.pt"))
        if not files:
            continue
        loaded = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
        row = {"fid": math.nan, "kid": math.nan, "kid_std": math.nan}
        if len(loaded) >= 2:
            samples = torch.stack([item["selected"][0] for item in loaded])
            truths = torch.stack([item["ground_truth"] for item in loaded])
            features, reference = (
                metrics.inception_features(
                    images, weights, settings.fid_random_backbone, run_device
                )
                for images in (samples, truths)
            )
            row["fid"] = metrics.frechet_distance(features, reference)
            row["kid"], row["kid_std"] = metrics.kernel_distance(features, reference)
        rows.append({**row, "set_images": len(loaded), "fid_backbone": label})
        index.append((folder.parent.name, folder.name))
    return pd.DataFrame(
        rows,
        index=pd.MultiIndex.from_tuples(index, names=["task", "method"]),
        columns=list(COLUMNS),
    )
