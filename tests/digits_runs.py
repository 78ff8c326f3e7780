"""Small runner configs on the shipped digits prior (box inpainting, DAPS with a few steps) and
the rows a run writes to results.csv, for the runner tests."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from experiments.config import ExperimentConfig, load_config

FAST = {"annealing_steps": 3, "mcmc_steps": 2, "ode_steps": 1, "sigma_max": 20.0}


def daps_method(name: str = "daps", **fields: Any) -> dict[str, Any]:
    """A method entry: DAPS with the per-task pixel HMC preset and the ``FAST`` overrides."""
    return {
        "name": name,
        "solver": "daps",
        "preset": "pixel_hmc/{task}",
        "overrides": FAST,
        **fields,
    }


def digits_config(
    name: str,
    output: Path,
    images: int,
    methods: list[dict[str, Any]],
    overrides: list[str],
    **sections: Any,
) -> ExperimentConfig:
    """An experiment on the first ``images`` digits test images, one box-inpainting task."""
    base = {
        "name": name,
        "prior": "digits",
        "data": {"dataset": "digits", "split": "test", "images": images},
        "tasks": [{"name": "box", "operator": "inpaint_box", "params": {"box": 16, "margin": 4}}],
        "methods": methods,
        **sections,
        "output": str(output),
    }
    return load_config(None, overrides, base=base)


def result_rows(output: Path) -> list[dict[str, str]]:
    """The rows of ``output``/results.csv."""
    with (output / "results.csv").open(newline="") as f:
        return list(csv.DictReader(f))
