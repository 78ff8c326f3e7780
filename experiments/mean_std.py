"""Mean ± std as table text: the one format of every report and benchmark table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable


def sample_mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of the finite values; the std is nan for
    a single value, both are nan for none."""
    finite = [float(v) for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else math.nan


def format_mean_std(mean: float, std: float, digits: int = 3) -> str:
    """``"29.07 ± 1.23"``; the mean alone when the std is nan, "n/a" when the mean is nan."""
    if math.isnan(mean):
        return "n/a"
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
