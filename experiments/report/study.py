"""Study reports of ``dipswarm tune``: trials, best trials and parameter importance."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.report.documents import markdown_document
from experiments.report.tables import format_count

STUDY_FILE = "search_study.json"  # written by search.tune into each study folder
STUDY_STATUS = {
    "COMPLETE": "completed",
    "PRUNED": "stopped",
    "FAIL": "failed",
    "RUNNING": "unfinished",
    "WAITING": "unfinished",
}
TRIAL_ATTR = "tune_trial_id"  # search.backend.TRIAL_ATTR (importing it would import Ray)


def find_studies(path: str | Path) -> list[Path]:
    """Study folders at ``path``: itself if it holds a study, else its sub-folders that do."""
    folder = Path(path)
    if (folder / STUDY_FILE).is_file():
        return [folder]
    found = sorted(p.parent for p in folder.glob(f"*/{STUDY_FILE}"))
    if not found:
        raise FileNotFoundError(f"no study ({STUDY_FILE}) in {folder} or its sub-folders")
    return found


def load_study(study_dir: str | Path) -> tuple[dict, Any]:
    """A study folder's record (``search_study.json``) and its Optuna study (journal)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    meta = json.loads((Path(study_dir) / STUDY_FILE).read_text())
    storage = JournalStorage(JournalFileBackend(meta["optuna_journal"]))
    return meta, optuna.load_study(study_name=meta["study_name"], storage=storage)


def study_trials(study: Any, metric: str) -> pd.DataFrame:
    """One row per trial: number, Tune trial id, status (completed, stopped early, failed,
    unfinished), the metric (the last low-fidelity value for stopped trials), steps reached,
    seconds, and the searched parameters."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        steps = max(trial.intermediate_values, default=math.nan)
        if trial.value is not None:
            value = trial.value
        elif trial.intermediate_values and trial.state.name == "PRUNED":
            value = trial.intermediate_values[steps]
        else:
            value = math.nan
        seconds = trial.duration.total_seconds() if trial.duration is not None else math.nan
        rows.append(
            {
                "number": trial.number,
                "trial_id": trial.user_attrs.get(TRIAL_ATTR, ""),
                "status": STUDY_STATUS.get(trial.state.name, trial.state.name.lower()),
                metric: value,
                "steps": steps,
                "seconds": seconds,
                **trial.params,
            }
        )
    return pd.DataFrame(rows)


def best_trials_table(trials: pd.DataFrame, metric: str, mode: str, top: int = 10) -> pd.DataFrame:
    """The ``top`` completed trials, best first (stopped and failed trials are left out)."""
    done = trials[trials["status"] == "completed"]
    return done.sort_values(metric, ascending=mode == "min", kind="stable").head(top)


def param_importances(study: Any) -> dict[str, float]:
    """fANOVA importance of each searched parameter over the completed trials (seeded);
    empty when there are too few completed trials or nothing varies."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) < 2:
        return {}
    try:
        return dict(get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0)))
    except (ValueError, RuntimeError):  # e.g. every completed trial has the same parameters
        return {}


def plot_param_importance(
    importances: dict[str, float], out_png: str | Path, title: str = ""
) -> Path:
    """Horizontal bars of the parameter importances, the most important on top."""
    from matplotlib.figure import Figure

    names = list(importances)[::-1]
    fig = Figure(figsize=(6, 0.45 * len(names) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color="C0")
    ax.set_xlabel("importance (fANOVA, completed trials)")
    ax.set_xlim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    fig.savefig(out_png, dpi=120)
    return Path(out_png)


def write_study_report(
    study: str | Path | Any, out: str | Path | None = None, top: int = 10
) -> dict[str, Path]:
    """Write ``study_report.md``, ``study_trials.csv``, ``best_trials.csv`` and (with two or
    more completed trials) ``param_importance.png`` for a study of ``dipswarm tune``.

    ``study`` is a study folder (``STORAGE/NAME``, holding ``search_study.json``) or a
    ``search.StudyResult``; ``out`` defaults to the study folder. Returns the paths by kind:
    md, trials, best (and importance).
    """
    folder = Path(getattr(study, "experiment_path", study))
    target = Path(out) if out is not None else folder
    target.mkdir(parents=True, exist_ok=True)
    meta, optuna_study = load_study(folder)
    metric, mode = meta["metric"], meta["mode"]
    trials = study_trials(optuna_study, metric)
    best = best_trials_table(trials, metric, mode, top) if len(trials) else trials
    paths = {"md": target / "study_report.md", "trials": target / "study_trials.csv"}
    paths["best"] = target / "best_trials.csv"
    trials.to_csv(paths["trials"], index=False)
    best.to_csv(paths["best"], index=False)
    importances = param_importances(optuna_study)
    if importances:
        paths["importance"] = plot_param_importance(
            importances, target / "param_importance.png", f"{meta['study_name']}: {metric}"
        )
    sections = _study_sections(meta, trials, best, importances, paths)
    paths["md"].write_text(markdown_document(folder, sections), "utf-8")
    return paths


def _study_sections(
    meta: dict,
    trials: pd.DataFrame,
    best: pd.DataFrame,
    importances: dict[str, float],
    paths: dict[str, Path],
) -> list[tuple[str, str]]:
    """(title, Markdown body) sections of a study report."""
    metric, mode = meta["metric"], meta["mode"]
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    asha = meta.get("asha") or "off"
    lines = [
        f"- study: {meta['study_name']} ({meta['experiment_path']})",
        f"- metric: {metric} ({mode}), sampler {meta['sampler']}, seed {meta['seed']}, "
        f"ASHA: {asha}",
        f"- trials: {len(trials)} of {meta['num_samples']} ("
        + ", ".join(f"{counts[s]} {s}" for s in sorted(counts))
        + f"); compute {format_count(trials['steps'].sum() if len(trials) else 0)} steps",
    ]
    if len(best):
        first = best.iloc[0]
        lines.append(f"- best: {metric} = {first[metric]:.6g} (trial #{first['number']})")
    sections = [("Study", "\n".join(lines) + "\n")]
    sections.append(("Best trials", _frame_markdown(best) if len(best) else "none completed\n"))
    if importances:
        rows = pd.DataFrame({"parameter": list(importances), "importance": importances.values()})
        body = f"![parameter importance]({paths['importance'].name})\n\n" + _frame_markdown(rows)
    else:
        body = "needs at least two completed trials with different parameters\n"
    sections.append(("Parameter importance", body))
    space = "\n".join(f"- {name}: `{dim}`" for name, dim in meta.get("space", {}).items())
    sections.append(("Search space", space + "\n"))
    return sections


def _frame_markdown(df: pd.DataFrame) -> str:
    """A plain Markdown table; floats with 4 significant digits."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "n/a" if math.isnan(value) else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- command line
