"""Tracking overhead: batched logging (experiments.tracking) vs one MLflow call per value.

Simulates the logging of one experiment on a fresh SQLite store: a parent run with a nested
config of about 80 fields, then per (task, method) child run its params, per-step traces,
final metrics and PNG sample grids. The same content is logged twice, through ``Tracker``
(``log_batch``) and naively (``log_param`` / ``log_metric`` per value), each into its own
store, and the times are set against a given run time (target: tracking under 2% of it).
Tracker's store is measured twice, in a temporary cache: the first SQLite store on a machine
is migrated by MLflow (and cached as a template), later ones are copies of the template.

Run: ``python -m experiments.benchmarks.tracking_overhead [--run-seconds 600]``.
The figure of a real run is ``Tracker.seconds``, which the runner logs as ``tracking_seconds``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from experiments.cli_help import bench_parser
from experiments.tracking import PARENT_TAG, Tracker, flatten_params

STORE_CALLS = (
    "create_experiment",
    "create_run",
    "log_batch",
    "log_param",
    "log_metric",
    "log_artifact",
    "set_terminated",
)


@dataclass(frozen=True)
class Workload:
    """What one simulated experiment logs."""

    children: int
    series: int
    steps: int
    metrics: int
    images: int
    config: dict[str, Any]
    pngs: tuple[Path, ...]

    def traces(self) -> dict[str, list[float]]:
        return {
            f"test_0000/series_{s}": [1.0 / (k + s + 1) for k in range(self.steps)]
            for s in range(self.series)
        }

    def finals(self) -> dict[str, float]:
        return {f"metric_{m}_mean": float(m) for m in range(self.metrics)}

    def child_params(self, index: int) -> dict[str, Any]:
        return {"task": f"task_{index // 2}", "method": f"method_{index % 2}", "particles": 4}


def nested_config(fields: int) -> dict[str, Any]:
    """A config shaped like ExperimentConfig: four sections of ``fields // 4`` values."""
    sections = ("data", "solver", "ensemble", "tracking")
    per = fields // len(sections)
    return {
        s: {f"{s}_field_{i}": i * 0.5 if i % 2 else f"v{i}" for i in range(per)} for s in sections
    }


def write_pngs(folder: Path, count: int, seed: int) -> tuple[Path, ...]:
    """``count`` noise PNGs the size of a runner grid (5 panels of 32x32 plus borders)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        pixels = rng.integers(0, 256, size=(36, 180, 3), dtype=np.uint8)
        path = folder / f"grid_{i}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return tuple(paths)


@contextmanager
def count_store_calls() -> Iterator[Callable[[], int]]:
    """Count MlflowClient calls that reach the store while the block runs."""
    from mlflow.tracking import MlflowClient

    with ExitStack() as stack:
        mocks = [
            stack.enter_context(
                mock.patch.object(
                    MlflowClient, name, autospec=True, side_effect=getattr(MlflowClient, name)
                )
            )
            for name in STORE_CALLS
        ]
        yield lambda: sum(m.call_count for m in mocks)


def batched(work: Workload, folder: Path) -> tuple[float, float]:
    """(setup seconds, logging seconds) through Tracker."""
    began = time.perf_counter()
    tracker = Tracker(None, "overhead", folder)
    tracker.start("experiment", work.config)
    setup = time.perf_counter() - began
    began = time.perf_counter()
    for index in range(work.children):
        with tracker.child(f"child {index}", work.child_params(index)) as child:
            child.log_traces(work.traces())
            child.log_metrics(work.finals())
            for image, png in enumerate(work.pngs):
                child.log_image(png, f"test_{image:04d}.png")
    tracker.finish()
    return setup, time.perf_counter() - began


def naive(work: Workload, folder: Path) -> tuple[float, float]:
    """(setup seconds, logging seconds) with one client call per param and metric value."""
    from mlflow.tracking import MlflowClient

    began = time.perf_counter()
    client = MlflowClient(tracking_uri=f"sqlite:///{folder.resolve()}/mlflow.db")
    experiment = client.create_experiment("overhead", str(folder.resolve() / "mlartifacts"))
    parent = client.create_run(experiment, run_name="experiment").info.run_id
    for key, value in flatten_params(work.config).items():
        client.log_param(parent, key, value)
    setup = time.perf_counter() - began
    began = time.perf_counter()
    for index in range(work.children):
        run = client.create_run(experiment, run_name=f"child {index}", tags={PARENT_TAG: parent})
        run_id = run.info.run_id
        for key, value in flatten_params(work.child_params(index)).items():
            client.log_param(run_id, key, value)
        for key, series in work.traces().items():
            for step, value in enumerate(series):
                client.log_metric(run_id, key, value, step=step)
        for key, value in work.finals().items():
            client.log_metric(run_id, key, value)
        for png in work.pngs:
            client.log_artifact(run_id, str(png), "images")
        client.set_terminated(run_id)
    client.set_terminated(parent)
    return setup, time.perf_counter() - began


def measure(mode: Callable[[Workload, Path], tuple[float, float]], work: Workload) -> list[float]:
    """[setup s, logging s, store calls] of one mode on a fresh store."""
    with tempfile.TemporaryDirectory() as tmp, count_store_calls() as calls:
        setup, logging = mode(work, Path(tmp))
        return [setup, logging, calls()]


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("tracking_overhead", __doc__)
    parser.add_argument("--children", type=int, default=6, help="(task, method) child runs")
    parser.add_argument("--series", type=int, default=4, help="traced series per child")
    parser.add_argument("--steps", type=int, default=100, help="steps per series")
    parser.add_argument("--metrics", type=int, default=10, help="final metrics per child")
    parser.add_argument("--images", type=int, default=2, help="PNG grids per child")
    parser.add_argument("--fields", type=int, default=80, help="config fields (parent params)")
    parser.add_argument("--run-seconds", type=float, default=600.0, help="run time to compare")
    args = parser.parse_args(argv)

    began = time.perf_counter()
    import mlflow.tracking  # noqa: F401  (timed once: both modes share the import)

    imported = time.perf_counter() - began
    with tempfile.TemporaryDirectory() as tmp:
        work = Workload(
            args.children,
            args.series,
            args.steps,
            args.metrics,
            args.images,
            nested_config(args.fields),
            write_pngs(Path(tmp), args.images, seed=0),
        )
        results = {"naive: one call per value": measure(naive, work)}
        with (
            tempfile.TemporaryDirectory() as cache,
            mock.patch.dict(os.environ, {"XDG_CACHE_HOME": cache}),
        ):
            results["batched, first store (template built)"] = measure(batched, work)
            results["batched, later stores (template copied)"] = measure(batched, work)

    points = args.children * (args.series * args.steps + args.metrics)
    print(
        f"{args.children} child runs x ({args.series} series x {args.steps} steps + "
        f"{args.metrics} metrics + {args.images} PNGs); {args.fields} config fields; "
        f"{points} metric points; fresh SQLite store per row"
    )
    print(f"import mlflow (once per process, counted in Tracker.seconds): {imported:.2f} s\n")
    print_table(results, imported, args.run_seconds)


def print_table(results: dict[str, list[float]], imported: float, run: float) -> None:
    """The Markdown table, totals including the import, and the batched/naive speed-up."""
    print(
        f"| logging | store calls | store setup s | logging s | total s (+ import) "
        f"| share of a {run:.0f} s run | run time for < 2% |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (setup, logging, calls) in results.items():
        total = imported + setup + logging
        print(
            f"| {name} | {calls:.0f} | {setup:.2f} | {logging:.2f} | {total:.2f} "
            f"| {100 * total / run:.2f}% | {total / 0.02:.0f} s |"
        )
    naive_logging = next(iter(results.values()))[1]
    batched_logging = min(logging for _, logging, _ in list(results.values())[1:])
    print(
        f"\nlogging column: batched is {naive_logging / batched_logging:.0f}x faster than one "
        "call per value"
    )


if __name__ == "__main__":
    main()
