"""Run dataset x tasks x methods: measure, sample with an ensemble, score, save, track.

For each (task, method), the images are solved in batches (``execution.images_per_batch``;
experiments/batches.py): y = A(x*) + noise with a recorded seed per image, one ensemble run per
batch, metrics on each image's selected samples, and each image's results written to the
output folder (results.csv row, samples, traces, image grid) as its batch finishes, before the
next batch starts. ``resume`` skips images already finished (a half-finished batch re-runs only
its unfinished images); an image that fails is recorded with its error and the run goes on.
Every (task, method) is a child MLflow run under one parent per experiment.
Output layout: see the README ("Experiments").
"""

from __future__ import annotations

import csv
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import ensemble
from ensemble.ray_runtime import ensure_ray
from experiments import metrics
from experiments.batches import SolvedImage, TaskOperators, measurement_seed, solve, split
from experiments.config import (
    ExperimentConfig,
    MethodConfig,
    TaskConfig,
    check_paths,
    dump_config,
    expand,
)

RESULT_COLUMNS = [
    "task",
    "method",
    "image",
    "index",
    "seed",
    "psnr",
    "ssim",
    "lpips",
    "lpips_backbone",
    "measurement_loss",
    "diversity",
    "posterior_std",
    "nfe",
    "seconds",
    "particles",
    "status",
    "error",
]


@dataclass
class Dataset:
    """Ground-truth images (N, C, H, W) in [-1, 1] and their names."""

    images: torch.Tensor
    names: list[str]


def load_dataset(config: ExperimentConfig) -> Dataset:
    """The configured images (the first ``data.images`` of the split)."""
    from experiments.data import ImageFolder, load_builtin_split

    data = config.data
    if data.dataset == "folder":
        assert data.folder is not None
        folder = ImageFolder(
            expand(data.folder), size=data.size or 256, channels=data.channels or 3
        )
        count = len(folder) if data.images == 0 else min(data.images, len(folder))
        return Dataset(torch.stack([folder[i] for i in range(count)]), folder.names[:count])
    split = load_builtin_split(data.dataset, data.split, data.size, data.channels)
    count = len(split.names) if data.images == 0 else min(data.images, len(split.names))
    return Dataset(split.images[:count], split.names[:count])


class ResultsFile:
    """results.csv: one row per image, appended and flushed as soon as the image is done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            with path.open("w", newline="") as f:
                csv.DictWriter(f, RESULT_COLUMNS).writeheader()

    def finished(self) -> dict[tuple[str, str, str], dict[str, str]]:
        """Rows of images that finished without error, by (task, method, image)."""
        with self.path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        return {(r["task"], r["method"], r["image"]): r for r in rows if r["status"] == "ok"}

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, RESULT_COLUMNS).writerow({k: row.get(k, "") for k in RESULT_COLUMNS})
            f.flush()


def run_experiment(
    config: ExperimentConfig,
    resume: bool = False,
    progress: bool = True,
    on_image: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """Run every (task, method, image); returns the output folder (results.csv inside)."""
    from experiments.report import write_report
    from experiments.tracking import Tracker, import_in_background

    check_paths(config)
    if config.tracking.enabled:
        import_in_background()
    output = Path(config.output).resolve()
    results_path = output / "results.csv"
    if results_path.exists() and not resume:
        raise FileExistsError(
            f"{output} already holds results; pass --resume to continue that run or choose "
            "another output folder (output=...)"
        )
    output.mkdir(parents=True, exist_ok=True)
    dump_config(config, output / "config.yaml")
    results = ResultsFile(results_path)
    done = results.finished() if resume else {}
    data = load_dataset(config)
    tracker = Tracker(
        config.tracking.uri, config.tracking.experiment, output, config.tracking.enabled
    )
    _start_ray_if_needed(config)  # while mlflow imports in the background
    tracker.start(config.name, config.to_dict(), tags={"output": str(output)})
    bar = _progress_bar(progress, len(config.tasks) * len(config.methods) * len(data.names))
    status = "FAILED"
    try:
        for task in config.tasks:
            task_operators = TaskOperators(task, tuple(data.images.shape[1:]))
            for method in config.methods:
                params = {
                    "task": task.name,
                    "method": method.name,
                    "solver": method.solver,
                    "preset": method.preset_for(task),
                    "overrides": method.overrides,
                    "operator": task.operator,
                    "operator_params": task.params,
                    "sigma_y": task.sigma,
                    "ensemble": config.method_ensemble(method),
                    "lpips_backbone": metrics.lpips_label(
                        config.metrics.lpips_net, config.metrics.lpips_random_backbone
                    ),
                }
                with tracker.child(f"{task.name} / {method.name}", _plain(params)) as child:
                    rows: dict[int, dict[str, Any]] = {}
                    todo = []
                    for index, name in enumerate(data.names):
                        if (task.name, method.name, name) in done:
                            rows[index] = done[(task.name, method.name, name)]
                            bar.update(1)
                        else:
                            todo.append(index)
                    particles = config.method_ensemble(method).particles
                    size = config.execution.batch_images(particles, config.device)
                    for batch in split(todo, size):
                        for row in _run_batch(
                            config, task, method, task_operators, data, batch, output, child
                        ):
                            results.append(row)
                            rows[row["index"]] = row
                            if on_image is not None:
                                on_image(row)
                            bar.update(1)
                    rows = [rows[i] for i in sorted(rows)]
                    child.log_metrics(_aggregate(rows))
        report = write_report(output)
        for path in report.values():
            tracker.log_artifact(path, "report")
        tracker.log_artifact(results_path)
        status = "FINISHED"
    finally:
        ensemble.release_workers()
        bar.close()
        tracker.log_metrics({"tracking_seconds": tracker.seconds})
        tracker.finish(status)
    return output


def _run_batch(
    config: ExperimentConfig,
    task: TaskConfig,
    method: MethodConfig,
    task_operators: TaskOperators,
    data: Dataset,
    indices: list[int],
    output: Path,
    child: Any,
) -> list[dict[str, Any]]:
    """One batch of images: measure, sample, then score and save each image; a batch that
    fails gives each of its images a failed row (``--resume`` re-runs only those)."""
    began = time.perf_counter()
    try:
        solved = solve(config, task, method, task_operators, data.images, indices)
    except Exception as err:  # one bad batch must not stop the experiment
        seconds = (time.perf_counter() - began) / len(indices)
        with (output / "errors.log").open("a") as log:
            names = ", ".join(data.names[i] for i in indices)
            log.write(f"--- {task.name} / {method.name} / {names}\n{traceback.format_exc()}\n")
        error = f"{type(err).__name__}: {err}"
        return [
            {
                **_identity(config, task, method, data, i),
                "status": "failed",
                "error": error,
                "seconds": seconds,
            }
            for i in indices
        ]
    seconds = (time.perf_counter() - began) / len(indices)
    return [
        _image_row(config, task, method, data, image, seconds, output, child) for image in solved
    ]


def _identity(
    config: ExperimentConfig, task: TaskConfig, method: MethodConfig, data: Dataset, index: int
) -> dict[str, Any]:
    """The columns that name an image's row."""
    return {
        "task": task.name,
        "method": method.name,
        "image": data.names[index],
        "index": index,
        "seed": measurement_seed(config, index),
    }


def _image_row(
    config: ExperimentConfig,
    task: TaskConfig,
    method: MethodConfig,
    data: Dataset,
    image: SolvedImage,
    seconds: float,
    output: Path,
    child: Any,
) -> dict[str, Any]:
    """Score one solved image and save its samples, traces and grid (its share of the batch's
    time as ``seconds``); an error here fails this image only."""
    from experiments.report import image_grid

    row = _identity(config, task, method, data, image.index)
    result = image.result
    try:
        row.update(
            metrics.ensemble_metrics(config.metrics, image.operator, image.truth, image.y, result)
        )
        particles = config.method_ensemble(method).particles
        row.update({"nfe": result.nfe, "particles": particles, "status": "ok", "error": ""})
        row["seconds"] = seconds
        folder = Path(task.name) / method.name
        stem = data.names[image.index].replace("/", "_")
        sample_file = _save(
            output / "samples" / folder / f"{stem}.pt", image.truth, image.y, result
        )
        trace_file = output / "traces" / folder / f"{stem}.json"
        trace_file.parent.mkdir(parents=True, exist_ok=True)
        trace_file.write_text(json.dumps(result.traces))
        grid_file = output / "images" / folder / f"{stem}.png"
        grid_file.parent.mkdir(parents=True, exist_ok=True)
        grid = image_grid(sample_file, grid_file)
        child.log_image(grid, f"{stem}.png")
        child.log_traces(
            {k: v for k, v in result.traces.items() if k in ("loss_best", "alive", "sigma", "ess")},
            prefix=f"{stem}/",
        )
    except Exception as err:
        row.update(
            {"status": "failed", "error": f"{type(err).__name__}: {err}", "seconds": seconds}
        )
        with (output / "errors.log").open("a") as log:
            log.write(f"--- {row['task']} / {row['method']} / {row['image']}\n")
            log.write(f"{traceback.format_exc()}\n")
    return row


def _save(
    path: Path, truth: torch.Tensor, y: torch.Tensor, result: ensemble.EnsembleResult
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    alive = [i for i, s in enumerate(result.status) if s == "ok"] or list(range(len(result.status)))
    kept = result.all_samples[alive].float()
    torch.save(
        {
            "ground_truth": truth[0].cpu(),
            "measurement": y[0].cpu(),
            "samples": result.all_samples.cpu(),
            "selected": result.samples.cpu(),
            "mean": kept.mean(0).cpu(),
            "std": kept.std(0).cpu() if len(kept) > 1 else torch.zeros_like(kept[0]).cpu(),
            "loss": result.loss.cpu(),
        },
        path,
    )
    return path


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean and std of the per-image metrics of one (task, method), for MLflow."""
    ok = [r for r in rows if r["status"] == "ok"]
    out: dict[str, float] = {"images": float(len(ok)), "failed": float(len(rows) - len(ok))}
    for key in ("psnr", "ssim", "lpips", "measurement_loss", "diversity", "posterior_std"):
        values = torch.tensor(
            [float(r[key]) for r in ok if r[key] not in ("", None)], dtype=torch.float64
        )
        values = values[torch.isfinite(values)]
        if values.numel():
            out[f"{key}_mean"] = float(values.mean())
            out[f"{key}_std"] = float(values.std()) if values.numel() > 1 else 0.0
    if ok:
        out["nfe"] = float(ok[0]["nfe"])
        out["seconds_per_image"] = sum(float(r["seconds"]) for r in ok) / len(ok)
    return out


def _plain(value: Any) -> Any:
    """Config values as plain data for MLflow params (dataclasses -> dicts)."""
    import dataclasses

    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _start_ray_if_needed(config: ExperimentConfig) -> None:
    """Connect to (or start) Ray once for the experiment when any method uses the ray backend."""
    addresses = {
        config.method_ensemble(m).address
        for m in config.methods
        if config.method_ensemble(m).backend == "ray"
    }
    if addresses:
        ensure_ray(sorted(addresses, key=str)[0])


def _progress_bar(enabled: bool, total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="images", disable=not enabled, unit="image")
