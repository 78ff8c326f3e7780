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
import itertools
import json
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import ensemble
from ensemble.backends import WorkerStartError, strip_terminal_codes
from ensemble.ray_runtime import ensure_ray
from experiments import metrics
from experiments.batches import (
    BatchRunner,
    PreparedBatch,
    SolvedImage,
    TaskOperators,
    is_out_of_memory,
    measurement_seed,
    split,
    split_warning,
)
from experiments.config import (
    ExperimentConfig,
    MethodConfig,
    TaskConfig,
    check_paths,
    expand,
    plain,
)
from experiments.resume import check_resume, start_fresh

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
    *metrics.COVERAGE_COLUMNS,
    "nfe",
    "nfe_spent",
    "seconds",
    "warmup_seconds",
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
    """results.csv: one row per (task, method, image), written as soon as the image is done.

    A new row is appended and flushed; a row for an image that already has one (a failed
    image that ``--resume`` ran again) replaces it by rewriting the file atomically (a temp
    file, then ``os.replace``), so that no reader sees the superseded row. The file is created
    with its first row: a run that fails before its first image leaves none, and a header-only
    file (left so by earlier versions) counts as no results.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys = {_row_key(r) for r in self._read()}

    def has_rows(self) -> bool:
        return bool(self._keys)

    def finished(self) -> dict[tuple[str, str, str], dict[str, str]]:
        """Rows of images that finished without error, by (task, method, image)."""
        return {_row_key(r): r for r in self._read() if r["status"] == "ok"}

    def append(self, row: dict[str, Any]) -> None:
        key, line = _row_key(row), {k: row.get(k, "") for k in RESULT_COLUMNS}
        if key in self._keys:
            rows = self._read()  # the new row takes the place of the first with its key
            at = next(i for i, r in enumerate(rows) if _row_key(r) == key)
            kept = [r for r in rows if _row_key(r) != key]
            self._rewrite([*kept[:at], line, *kept[at:]])
            return
        mode = "a" if self._keys else "w"  # "w": a header-only file is started afresh
        with self.path.open(mode, newline="") as f:
            writer = csv.DictWriter(f, RESULT_COLUMNS)
            if mode == "w":
                writer.writeheader()
            writer.writerow(line)
            f.flush()
        self._keys.add(key)

    def _read(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as f:
            return list(csv.DictReader(f))

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        temp = self.path.with_name(f"{self.path.name}.tmp")
        with temp.open("w", newline="") as f:
            writer = csv.DictWriter(f, RESULT_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, self.path)


def _row_key(row: Mapping[str, Any]) -> tuple[str, str, str]:
    """The (task, method, image) a results row belongs to."""
    return (str(row["task"]), str(row["method"]), str(row["image"]))


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
    output = Path(config.output).resolve()
    results_path = output / "results.csv"
    results = ResultsFile(results_path)
    if results.has_rows():
        if not resume:
            raise FileExistsError(
                f"{output} already holds results; pass --resume to continue that run or choose "
                "another output folder (output=...)"
            )
        check_resume(config, output)  # refuses a config that changes results, before any work
    if config.tracking.enabled:
        import_in_background()
    output.mkdir(parents=True, exist_ok=True)
    if not results.has_rows():
        start_fresh(config, output)
    done = results.finished()
    data = load_dataset(config)
    tracker = Tracker(
        config.tracking.uri, config.tracking.experiment, output, config.tracking.enabled
    )
    _start_ray_if_needed(config)  # while mlflow imports in the background
    tracker.start(config.name, config.to_dict(), tags={"output": str(output)}, resume=resume)
    bar = _progress_bar(progress, len(config.tasks) * len(config.methods) * len(data.names))
    groups: list[_Group] = []
    status = "FAILED"
    try:
        for task in config.tasks:
            task_operators = TaskOperators(task, tuple(data.images.shape[1:]))
            for method in config.methods:
                child = tracker.child(
                    f"{task.name} / {method.name}", _child_params(config, task, method)
                )
                runner = BatchRunner(config, task, method, task_operators, data.images)
                group = _Group(runner, child)
                for index, name in enumerate(data.names):
                    if (task.name, method.name, name) in done:
                        group.rows[index] = done[(task.name, method.name, name)]
                        bar.update(1)
                    else:
                        group.todo.append(index)
                groups.append(group)

        def record(group: _Group, row: dict[str, Any]) -> None:
            results.append(row)  # on disk before the next batch is handed out
            group.rows[row["index"]] = row
            if on_image is not None:
                on_image(row)
            bar.update(1)

        jobs = [
            (group, batch)
            for group in groups
            for batch in split(group.todo, _batch_size(config, group.runner.method))
        ]
        if config.execution.max_concurrent_jobs == 1:
            for group, batch in jobs:
                for row in _run_batch(config, group, data, batch, output):
                    record(group, row)
        else:
            _run_pooled(config, jobs, data, output, record, bar, tracker)
        for group in groups:
            group.child.log_metrics(_aggregate([group.rows[i] for i in sorted(group.rows)]))
            group.child.end("FINISHED")
        report = write_report(output)
        for path in report.values():
            tracker.log_artifact(path, "report")
        tracker.log_artifact(results_path)
        status = "FINISHED"
    except KeyboardInterrupt:  # Ctrl-C: the runs end KILLED, and --resume continues them
        status = "KILLED"
        raise
    finally:
        ensemble.release_workers()
        bar.close()
        for group in groups:  # children not finished above end with the parent's status
            group.child.end(status)
        tracker.log_metrics({"tracking_seconds": tracker.seconds})
        tracker.finish(status)
    return output


@dataclass
class _Group:
    """One (task, method): its batch runner and child MLflow run, finished rows by image
    index, images to do."""

    runner: BatchRunner
    child: Any
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    todo: list[int] = field(default_factory=list)


def _batch_size(config: ExperimentConfig, method: MethodConfig) -> int:
    particles = config.method_ensemble(method).particles
    return config.execution.batch_images(particles, config.device)


def _child_params(config: ExperimentConfig, task: TaskConfig, method: MethodConfig) -> Any:
    """The params of a (task, method) child run."""
    return plain(
        {
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
    )


def _run_pooled(
    config: ExperimentConfig,
    jobs: list[tuple[_Group, list[int]]],
    data: Dataset,
    output: Path,
    record: Callable[[_Group, dict[str, Any]], None],
    bar: Any,
    tracker: Any,
) -> None:
    """Run the batches as concurrent jobs of an ``ensemble.JobPool`` over the Ray cluster and
    write each image as its job completes (in completion order; the content does not depend
    on it). A job that runs out of memory is split in two and resubmitted."""
    from ensemble import JobPool

    ex = config.execution
    concurrent = None if ex.max_concurrent_jobs == "auto" else int(ex.max_concurrent_jobs)
    began, images_done = time.perf_counter(), 0
    with JobPool(concurrent, ex.cpus_per_job, ex.gpus_per_job, config.ensemble.address) as pool:
        pending: dict[int, tuple[_Group, PreparedBatch]] = {}
        keys = itertools.count()

        def submit(group: _Group, indices: list[int]) -> None:
            try:
                batch = group.runner.prepare(indices)
            except Exception as err:  # measuring failed: the images fail, the rest goes on
                for row in _failed_rows(config, group, data, indices, err, 0.0, output):
                    record(group, row)
                return
            key = next(keys)
            pending[key] = (group, batch)
            pool.submit(key, batch.spec)

        for group, indices in jobs:
            submit(group, indices)
        for outcome in pool.results():
            group, batch = pending.pop(outcome.key)
            if outcome.results is None:
                error = outcome.error or "the job failed"
                if is_out_of_memory(error) and len(batch.indices) > 1:
                    half = split_warning(
                        group.runner.task, group.runner.method, len(batch.indices), error
                    )
                    for part in split(batch.indices, half):
                        submit(group, part)
                    continue
                failure = RuntimeError(f"{error} (after {outcome.attempts} attempt(s))")
                rows = _failed_rows(config, group, data, batch.indices, failure, 0.0, output)
            else:
                seconds, warmup = _split_warmup(
                    outcome.results[0].seconds, outcome.results, len(batch.indices)
                )
                rows = [
                    _image_row(config, group, data, image, seconds, output, warmup)
                    for image in batch.solved(outcome.results)
                ]
            for row in rows:
                record(group, row)
            images_done += len(rows)
            counts = pool.counts()
            rate = images_done / max(time.perf_counter() - began, 1e-9)
            bar.set_postfix(
                running=counts.running,
                queued=counts.queued,
                failed=counts.failed,
                images_per_s=f"{rate:.2f}",
            )
            tracker.log_metrics(
                {
                    "jobs_done": counts.done,
                    "jobs_running": counts.running,
                    "jobs_queued": counts.queued,
                    "jobs_failed": counts.failed,
                    "images_per_second": rate,
                },
                step=counts.done + counts.failed,
            )


def _run_batch(
    config: ExperimentConfig, group: _Group, data: Dataset, indices: list[int], output: Path
) -> list[dict[str, Any]]:
    """One batch of images in this process: measure, sample, then score and save each image;
    a batch that fails gives each of its images a failed row (``--resume`` re-runs only
    those). A Ray worker that cannot start stops the run: every batch would fail alike."""
    began = time.perf_counter()
    try:
        solved = group.runner.solve(indices)
    except WorkerStartError as err:
        _log_error(output, group, data, indices, err)
        raise
    except Exception as err:  # one bad batch must not stop the experiment
        seconds = (time.perf_counter() - began) / len(indices)
        return _failed_rows(config, group, data, indices, err, seconds, output)
    seconds, warmup = _split_warmup(
        time.perf_counter() - began, [s.result for s in solved], len(indices)
    )
    return [_image_row(config, group, data, image, seconds, output, warmup) for image in solved]


def _split_warmup(
    wall: float, results: Sequence[ensemble.EnsembleResult], images: int
) -> tuple[float, float]:
    """Each image's share of a batch's ``wall`` seconds, without the warm-up (worker start,
    prior loading, init: the ensemble's ``setup_seconds``), and its share of the warm-up, so
    the first image does not carry the whole start-up (reported apart as ``warmup_seconds``)."""
    setup = results[0].stats["setup_seconds"]  # one ensemble run: shared by its problems
    return max(wall - setup, 0.0) / images, setup / images


def _failed_rows(
    config: ExperimentConfig,
    group: _Group,
    data: Dataset,
    indices: list[int],
    err: BaseException,
    seconds: float,
    output: Path,
) -> list[dict[str, Any]]:
    """A failed row per image of a batch, the traceback in errors.log."""
    _log_error(output, group, data, indices, err)
    error = strip_terminal_codes(f"{type(err).__name__}: {err}")
    return [
        {
            **_identity(config, group.runner.task, group.runner.method, data, i),
            "status": "failed",
            "error": error,
            "seconds": seconds,
        }
        for i in indices
    ]


def _log_error(
    output: Path, group: _Group, data: Dataset, indices: list[int], err: BaseException
) -> None:
    """The traceback of a batch's error in errors.log, without terminal colour codes (Ray
    colours the worker tracebacks it forwards)."""
    with (output / "errors.log").open("a") as log:
        names = ", ".join(data.names[i] for i in indices)
        log.write(f"--- {group.runner.task.name} / {group.runner.method.name} / {names}\n")
        log.write(f"{strip_terminal_codes(''.join(traceback.format_exception(err)))}\n")


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
    group: _Group,
    data: Dataset,
    image: SolvedImage,
    seconds: float,
    output: Path,
    warmup: float,
) -> dict[str, Any]:
    """Score one solved image and save its samples, traces and grid (its share of the batch's
    time as ``seconds``, of its warm-up as ``warmup_seconds``); an error here fails this
    image only."""
    from experiments.report import image_grid

    task, method, child = group.runner.task, group.runner.method, group.child
    row = _identity(config, task, method, data, image.index)
    result = image.result
    try:
        row.update(
            metrics.ensemble_metrics(config.metrics, image.operator, image.truth, image.y, result)
        )
        particles = len(result.all_samples)
        row.update({"nfe": result.nfe, "nfe_spent": result.nfe_spent, "particles": particles})
        row.update({"status": "ok", "error": "", "seconds": seconds, "warmup_seconds": warmup})
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
    log_weights = None if result.log_weights is None else result.log_weights[alive]
    weights = metrics.normalised_weights(log_weights, len(kept)).to(kept)
    mean = torch.einsum("n,n...->...", weights, kept)
    std = metrics.weighted_std(kept, log_weights).float() if len(kept) > 1 else 0 * kept[0]
    torch.save(
        {
            "ground_truth": truth[0].cpu(),
            "measurement": y[0].cpu(),
            "samples": result.all_samples.cpu(),
            "selected": result.samples.cpu(),
            "mean": mean.cpu(),  # weighted by a weighted solver's final weights
            "std": std.cpu(),
            "loss": result.loss.cpu(),
        },
        path,
    )
    return path


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean and std of the per-image metrics of one (task, method), for MLflow."""
    ok = [r for r in rows if r["status"] == "ok"]
    out: dict[str, float] = {"images": float(len(ok)), "failed": float(len(rows) - len(ok))}
    keys = ("psnr", "ssim", "lpips", "measurement_loss", "diversity", "posterior_std")
    for key in (*keys, *metrics.COVERAGE_COLUMNS):  # coverage: absent for one particle
        values = torch.tensor(
            [float(r[key]) for r in ok if r.get(key) not in ("", None)], dtype=torch.float64
        )
        values = values[torch.isfinite(values)]
        if values.numel():
            out[f"{key}_mean"] = float(values.mean())
            out[f"{key}_std"] = float(values.std()) if values.numel() > 1 else 0.0
    if ok:
        out["nfe"] = float(ok[0]["nfe"])
        out["nfe_spent"] = sum(float(r["nfe_spent"]) for r in ok) / len(ok)
        out["seconds_per_image"] = sum(float(r["seconds"]) for r in ok) / len(ok)
        out["warmup_seconds"] = sum(float(r["warmup_seconds"]) for r in ok)
    return out


def _start_ray_if_needed(config: ExperimentConfig) -> None:
    """Connect to (or start) Ray once for the experiment when any method uses the ray backend."""
    ensembles = [config.method_ensemble(m) for m in config.methods]
    addresses = {e.address for e in ensembles if e.backend == "ray"}
    if addresses:
        ensure_ray(sorted(addresses, key=str)[0])


def _progress_bar(enabled: bool, total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="images", disable=not enabled, unit="image")
