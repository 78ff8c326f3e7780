"""The best config of a study as a YAML preset (``best.yaml`` in the study folder).

For image studies an experiment config that ``dipswarm run`` accepts (the method's overrides
updated, ``data.split`` back to ``test``); for GMM studies ``solver``, ``preset`` and
``overrides`` for ``solvers.build``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from experiments.tune_config import TuneConfig

if TYPE_CHECKING:
    import search

PRESET_FILE = "best.yaml"


def best_document(config: TuneConfig, best: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The best config as a preset: for image studies the experiment config with the method's
    overrides updated, on the test split, writing to ``folder/best-run``; for GMM studies
    ``solver``, ``preset`` and ``overrides``."""
    overrides = {**config.method.overrides, **{k: _plain(v) for k, v in best.items()}}
    if config.experiment is None:
        return {"solver": config.method.solver, "preset": config.method.preset,
                "overrides": overrides}  # fmt: skip
    document = config.experiment.to_dict()
    document["name"] = f"{config.name}-best"
    document["data"]["split"] = "test"
    document["methods"][0]["overrides"] = overrides
    document["output"] = str(folder / "best-run")
    return document


def write_preset(config: TuneConfig, result: search.StudyResult) -> Path:
    """Write ``best.yaml`` into the study folder (see ``best_document``)."""
    assert result.best_config is not None and result.best_value is not None
    folder = result.experiment_path
    document = best_document(config, result.best_config, folder)
    path = folder / PRESET_FILE
    if config.experiment is not None:
        use = f"# run it on the test split: dipswarm run {path} [data.images=N]\n"
    else:
        use = "# use: solvers.build(solver, preset, **overrides)\n"
    header = (
        f"# best config of study {result.study_name}: {result.metric} = "
        f"{result.best_value:.6g} ({result.mode}) on the tuning data, trial "
        f"{result.best_trial_id}\n{use}"
    )
    path.write_text(header + yaml.safe_dump(document, sort_keys=False))
    return path


def _plain(value: Any) -> Any:
    """Numpy or torch scalars as Python numbers (for YAML)."""
    return value.item() if hasattr(value, "item") else value
