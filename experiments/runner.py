"""Run dataset x tasks x methods: measure, sample with an ensemble, score, save, track.

For each (task, method) and each image: y = A(x*) + noise with a recorded seed, an ensemble
run (``ensemble.run``), metrics on the selected samples, and the per-image results written to
the output folder (results.csv row, samples, traces, image grid) before the next image starts.
``resume`` skips images already finished; an image that fails is recorded with its error and
the run goes on. Every (task, method) is a child MLflow run under one parent per experiment.
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
import operators
from ensemble import EnsembleSpec, OperatorSpec
from ensemble.ray_runtime import ensure_ray
from experiments import metrics
from experiments.config import (
    ExperimentConfig,
    MethodConfig,
    TaskConfig,
    check_paths,
    dump_config,
    expand,
)
from operators import Operator
from solvers.base import particle_seed

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
_MEASUREMENT_SALT = 0x3EA5
_SAMPLER_SALT = 0x5A3


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


def build_operator(task: TaskConfig, image_shape: tuple[int, ...]) -> Operator:
    """The task's operator for images of ``image_shape`` (``shape`` defaults to it)."""
    params = {"shape": tuple(image_shape), **expand(task.params), "sigma": task.sigma}
    params["shape"] = tuple(params["shape"])
    return operators.build(task.operator, **params)


def ensemble_spec(
    config: ExperimentConfig,
    task: TaskConfig,
    method: MethodConfig,
    operator: Operator,
    y: torch.Tensor,
    seed: int,
) -> EnsembleSpec:
    """The ensemble run of one image."""
    return EnsembleSpec(
        solver=method.spec_for(task),
        prior=expand(config.prior),
        operator=OperatorSpec.of(operator),
        y=y,
        seed=seed,
        device=config.device,
        settings=config.method_ensemble(method).replace(progress=False),
    )


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
            operator = build_operator(task, tuple(data.images.shape[1:]))
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
                    rows = []
                    for index, name in enumerate(data.names):
                        key = (task.name, method.name, name)
                        if key in done:
                            rows.append(done[key])
                        else:
                            row = _run_image(
                                config, task, method, operator, data, index, output, child
                            )
                            results.append(row)
                            rows.append(row)
                            if on_image is not None:
                                on_image(row)
                        bar.update(1)
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


def sample_image(
    config: ExperimentConfig,
    task: TaskConfig,
    method: MethodConfig,
    operator: Operator,
    data: Dataset,
    index: int,
) -> tuple[torch.Tensor, torch.Tensor, EnsembleSpec, ensemble.EnsembleResult]:
    """(truth, y, spec, result) of image ``index``: its measurement and ensemble run, seeded by
    (config.seed, index) so that ``dipswarm run`` and ``dipswarm tune`` see the same ones."""
    truth = data.images[index : index + 1].to(config.device)
    seed = particle_seed(config.seed ^ _MEASUREMENT_SALT, index)
    y = operator.to(config.device).measure(truth, torch.Generator().manual_seed(seed))
    sampler_seed = particle_seed(config.seed ^ _SAMPLER_SALT, index)
    spec = ensemble_spec(config, task, method, operator, y, sampler_seed)
    return truth, y, spec, ensemble.run(spec)


def _run_image(
    config: ExperimentConfig,
    task: TaskConfig,
    method: MethodConfig,
    operator: Operator,
    data: Dataset,
    index: int,
    output: Path,
    child: Any,
) -> dict[str, Any]:
    """One image: measure, sample, score, save; errors become a failed row."""
    from experiments.report import image_grid

    name = data.names[index]
    seed = particle_seed(config.seed ^ _MEASUREMENT_SALT, index)
    row: dict[str, Any] = {
        "task": task.name,
        "method": method.name,
        "image": name,
        "index": index,
        "seed": seed,
    }
    began = time.perf_counter()
    try:
        truth, y, spec, result = sample_image(config, task, method, operator, data, index)
        row.update(metrics.ensemble_metrics(config.metrics, operator, truth, y, result))
        row.update(
            {"nfe": result.nfe, "particles": spec.settings.particles, "status": "ok", "error": ""}
        )
        row["seconds"] = time.perf_counter() - began
        folder = Path(task.name) / method.name
        stem = name.replace("/", "_")
        sample_file = _save(output / "samples" / folder / f"{stem}.pt", truth, y, result)
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
    except Exception as err:  # one bad image must not stop the experiment
        row.update(
            {
                "status": "failed",
                "error": f"{type(err).__name__}: {err}",
                "seconds": time.perf_counter() - began,
            }
        )
        with (output / "errors.log").open("a") as log:
            log.write(f"--- {task.name} / {method.name} / {name}\n{traceback.format_exc()}\n")
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
