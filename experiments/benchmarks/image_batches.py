"""Image batches: images per second and peak memory of ``dipswarm run`` with 1, 4 and 16 images
per ensemble run, and the per-row cost of a guided-diffusion FFHQ 256 UNet call at 1 to 32 rows.

1. The same experiment (shipped ``digits`` prior, 4x super-resolution, 16 test images, DAPS
   pixel HMC and DPS at the reduced step counts of ``experiments/configs/demo.yaml``) runs with
   ``execution.images_per_batch`` = 1, 4 and 16, each configuration in a fresh process (so that
   no run's peak memory hides another's): after a one-image warm-up run in that process (torch
   kernels, prior load), the wall time of ``run_experiment`` gives images per second, and a
   sampler thread reads the process's resident memory (psutil, every 10 ms) for the run's peak.
   Seeds are (config seed, image index, particle index), so results.csv must not depend on the
   batch size: the per-image PSNR, SSIM and measurement loss of every batch size are compared
   with those of 1 image per batch (relative tolerance ``TOLERANCE``, float round-off of
   batched kernels; docs/ensemble.md).
2. The guided-diffusion UNet with the FFHQ 256 architecture (Dhariwal & Nichol 2021, as used by
   DPS, Chung et al. 2023, and DAPS, Zhang et al. 2025; ``solvers.priors.guided_diffusion``),
   random weights, no gradient: seconds per call and per row at each batch, and the per-row
   cost relative to batch 1. On a GPU the per-row cost falls steeply with the batch; this CPU
   shows the shape of that curve, flattened.

Run: ``python -m experiments.benchmarks.image_batches`` (or ``dipswarm bench image_batches``).
Targets (issue 14): images/s at 16 images per batch at least 3x that at 1 for DAPS on the
digits prior; results.csv identical across the batch sizes within ``TOLERANCE``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from experiments.cli_help import bench_parser

TOLERANCE = 1e-4  # relative: batched and per-image kernels may differ in float round-off
COMPARED = ("psnr", "ssim", "measurement_loss")
TARGET_RATIO = 3.0  # images/s at the largest batch over images/s at 1 image per batch (DAPS)
TARGET_METHOD = "daps_hmc"
MODULE = "experiments.benchmarks.image_batches"  # run as a fresh process per configuration
TASK = {
    "name": "super_resolution_x4",
    "operator": "super_resolution",
    "params": {"factor": 4, "mode": "bicubic"},
}


def methods(dps_steps: int) -> dict[str, dict[str, Any]]:
    """The benchmark's methods by name: DAPS pixel HMC at the demo's step counts, DPS."""
    return {
        TARGET_METHOD: {
            "name": TARGET_METHOD,
            "solver": "daps",
            "preset": "pixel_hmc/{task}",
            "overrides": {
                "annealing_steps": 25,
                "mcmc_steps": 20,
                "ode_steps": 3,
                "sigma_max": 20.0,
            },
        },
        "dps": {
            "name": "dps",
            "solver": "dps",
            "preset": "pixel/{task}",
            "overrides": {"num_steps": dps_steps},
        },
    }


def experiment(
    method: dict[str, Any],
    images: int,
    images_per_batch: int,
    particles: int,
    output: str,
    device: str = "cpu",
) -> dict[str, Any]:
    """The config mapping of one run: one method, one task, tracking and LPIPS off."""
    return {
        "name": f"image_batches_{method['name']}_{images_per_batch}",
        "prior": "digits",
        "device": device,
        "data": {"dataset": "digits", "split": "test", "images": images},
        "tasks": [TASK],
        "methods": [method],
        "ensemble": {"particles": particles, "backend": "local", "selection": "best"},
        "execution": {"images_per_batch": images_per_batch},
        "metrics": {"lpips": False},
        "tracking": {"enabled": False},
        "output": output,
        "seed": 0,
    }


# -- part 1: dipswarm run ----------------------------------------------------------------------
class PeakRSS:
    """Peak resident memory of this process while the ``with`` block runs, sampled by a thread.

    ``start_mb`` is the resident memory on entry, ``peak_mb`` the largest sample (entry and exit
    included), ``growth_mb`` their difference.
    """

    def __init__(self, interval: float = 0.01) -> None:
        import psutil  # a dependency of accelerate, which the package requires

        self._process = psutil.Process()
        self.interval = interval
        self.start_mb = self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _rss_mb(self) -> float:
        return self._process.memory_info().rss / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, self._rss_mb())

    def __enter__(self) -> PeakRSS:
        self.start_mb = self.peak_mb = self._rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb())

    @property
    def growth_mb(self) -> float:
        return self.peak_mb - self.start_mb


@dataclass
class RunRow:
    """One (method, images_per_batch) run: wall and process CPU seconds of ``run_experiment``
    (CPU time, all threads, is far less disturbed than wall time by other jobs on shared cores)
    and memory."""

    method: str
    images_per_batch: int
    images: int
    seconds: float
    cpu_seconds: float
    peak_mb: float
    growth_mb: float
    output: str

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def images_per_cpu_s(self) -> float:
        return self.images / self.cpu_seconds


def measure_run(raw: dict[str, Any], warmup: bool = True) -> RunRow:
    """Run the experiment ``raw`` (a config mapping) in this process and time it; with
    ``warmup``, a one-image run into ``<output>-warmup`` goes first (kernels, prior load)."""
    from experiments.config import load_config
    from experiments.runner import run_experiment

    config = load_config(base=raw)
    if warmup:
        first = load_config(
            base=raw,
            overrides=[
                "data.images=1",
                "execution.images_per_batch=1",
                f"output={raw['output']}-warmup",
            ],
        )
        run_experiment(first, progress=False)
    with PeakRSS() as memory:
        began, cpu_began = time.perf_counter(), time.process_time()
        run_experiment(config, progress=False)
        seconds = time.perf_counter() - began
        cpu_seconds = time.process_time() - cpu_began
    return RunRow(
        method=config.methods[0].name,
        images_per_batch=int(raw["execution"]["images_per_batch"]),
        images=config.data.images,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        peak_mb=memory.peak_mb,
        growth_mb=memory.growth_mb,
        output=str(config.output),
    )


def measure_in_subprocess(raw: dict[str, Any], threads: int) -> RunRow:
    """``measure_run`` in a fresh Python process (its own memory peak), with ``threads``."""
    path = Path(raw["output"] + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(raw))
    command = [sys.executable, "-m", MODULE, "--one", str(path), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return RunRow(**json.loads(done.stdout.strip().splitlines()[-1]))


def read_results(output: str | Path) -> dict[str, dict[str, str]]:
    """results.csv of a run folder, one row per image name."""
    with (Path(output) / "results.csv").open(newline="") as f:
        return {row["image"]: row for row in csv.DictReader(f)}


def relative_difference(a: float, b: float) -> float:
    """|a - b| / max(|a|, |b|) (0 when equal, NaN equal to NaN, inf when only one is NaN)."""
    if math.isnan(a) or math.isnan(b):
        return 0.0 if math.isnan(a) and math.isnan(b) else math.inf
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b))


def max_difference(
    reference: dict[str, dict[str, str]], other: dict[str, dict[str, str]]
) -> tuple[float, str]:
    """The largest relative difference of the ``COMPARED`` columns between two results.csv and
    where it is (``image/column``); inf when the images, their seeds or a status differ."""
    if set(reference) != set(other):
        return math.inf, f"images differ: {sorted(set(reference) ^ set(other))}"
    worst, where = 0.0, ""
    for image, row in sorted(reference.items()):
        for run in (row, other[image]):
            if run["status"] != "ok":
                return math.inf, f"{image}: status {run['status']} ({run['error']})"
        if row["seed"] != other[image]["seed"]:
            return math.inf, f"{image}: seed {row['seed']} vs {other[image]['seed']}"
        for column in COMPARED:
            diff = relative_difference(float(row[column]), float(other[image][column]))
            if diff > worst or not where:
                worst, where = diff, f"{image}/{column}"
    return worst, where


def throughput_table(rows: Sequence[RunRow]) -> str:
    """Markdown: per (method, images per batch) images per wall second and per CPU second, each
    as a ratio to 1 image per batch, and memory."""
    base = {r.method: r for r in rows if r.images_per_batch == 1}
    lines = [
        "| method | images/batch | images | wall s | images/s | x vs 1/batch | CPU s "
        "| x vs 1/batch (CPU) | peak RSS MB | RSS growth MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        one = base.get(r.method)
        wall = f"{r.images_per_s / one.images_per_s:.2f}" if one else "n/a"
        cpu = f"{r.images_per_cpu_s / one.images_per_cpu_s:.2f}" if one else "n/a"
        lines.append(
            f"| {r.method} | {r.images_per_batch} | {r.images} | {r.seconds:.1f} | "
            f"{r.images_per_s:.3f} | {wall} | {r.cpu_seconds:.1f} | {cpu} | {r.peak_mb:.0f} | "
            f"{r.growth_mb:.0f} |"
        )
    return "\n".join(lines)


def identity_lines(rows: Sequence[RunRow]) -> tuple[list[str], bool]:
    """Per method and batch size, the largest relative difference of results.csv to 1 image per
    batch; and whether every one is within ``TOLERANCE``."""
    lines, ok = [], True
    by_method: dict[str, dict[int, RunRow]] = {}
    for r in rows:
        by_method.setdefault(r.method, {})[r.images_per_batch] = r
    for method, runs in by_method.items():
        if 1 not in runs:
            lines.append(f"{method}: no run with 1 image per batch to compare with")
            ok = False
            continue
        reference = read_results(runs[1].output)
        for size, run in sorted(runs.items()):
            if size == 1:
                continue
            diff, where = max_difference(reference, read_results(run.output))
            ok = ok and diff <= TOLERANCE
            lines.append(
                f"{method}: {size}/batch vs 1/batch, max relative difference of "
                f"{'/'.join(COMPARED)} = {diff:.2e} (at {where}; tolerance {TOLERANCE:.0e})"
            )
    return lines, ok


def target_lines(rows: Sequence[RunRow]) -> list[str]:
    """PASS/FAIL lines for the issue's two targets."""
    daps = {r.images_per_batch: r for r in rows if r.method == TARGET_METHOD}
    out = []
    if 1 in daps and len(daps) > 1:
        largest = max(daps)
        ratio = daps[largest].images_per_s / daps[1].images_per_s
        cpu_ratio = daps[largest].images_per_cpu_s / daps[1].images_per_cpu_s
        verdict = "PASS" if ratio >= TARGET_RATIO else "FAIL"
        out.append(
            f"{verdict}: {TARGET_METHOD} images/s at {largest}/batch = {ratio:.2f}x that at "
            f"1/batch (target >= {TARGET_RATIO:.0f}x; per CPU second: {cpu_ratio:.2f}x)"
        )
    else:
        out.append(f"n/a: {TARGET_METHOD} needs 1 and a larger images/batch for the speed target")
    lines, ok = identity_lines(rows)
    out.append(
        f"{'PASS' if ok else 'FAIL'}: results.csv identical across images/batch "
        f"{sorted({r.images_per_batch for r in rows})} within {TOLERANCE:.0e} relative"
    )
    return lines + out


# -- part 2: the FFHQ 256 UNet -----------------------------------------------------------------
@dataclass
class UNetRow:
    """Seconds per call of the UNet at ``batch`` rows (median of ``calls``; 0 calls: skipped)."""

    batch: int
    seconds: float
    calls: int

    @property
    def per_row(self) -> float:
        return self.seconds / self.batch


def time_unet(
    config: Any, batches: Sequence[int], repeats: int, call_limit: float
) -> list[UNetRow]:
    """Time ``GuidedDiffusionUNet(config)`` (random weights, no gradient) at each batch size.

    A batch whose call, estimated from the per-row time of the largest batch timed so far,
    would take more than ``call_limit`` seconds is skipped (``calls`` = 0); otherwise it gets
    ``repeats`` calls, fewer if they would exceed ``call_limit`` together, after one warm-up
    call at the first batch.
    """
    from solvers.priors.guided_diffusion import GuidedDiffusionUNet

    torch.manual_seed(0)
    unet = GuidedDiffusionUNet(config).eval()
    shape = (config.in_channels, config.image_size, config.image_size)
    rows: list[UNetRow] = []
    with torch.no_grad():
        for i, batch in enumerate(sorted(batches)):
            x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
            t = torch.full((batch,), 0.5 * config.diffusion_steps)
            calls = repeats
            if rows:
                estimate = rows[-1].per_row * batch
                if estimate > call_limit:
                    rows.append(UNetRow(batch, estimate, 0))
                    continue
                calls = max(1, min(repeats, int(call_limit // estimate)))
            if i == 0:
                unet(x, t)
            times = []
            for _ in range(calls):
                began = time.perf_counter()
                unet(x, t)
                times.append(time.perf_counter() - began)
            rows.append(UNetRow(batch, statistics.median(times), calls))
    return rows


def unet_table(rows: Sequence[UNetRow]) -> str:
    """Markdown: seconds per call and per row, and the per-row cost relative to batch 1."""
    base = next((r.per_row for r in rows if r.batch == 1 and r.calls), None)
    lines = [
        "| rows/call | calls timed | s/call | s/row | s/row vs batch 1 |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if not r.calls:
            lines.append(f"| {r.batch} | skipped | ~{r.seconds:.0f} (est.) | - | - |")
            continue
        ratio = f"{r.per_row / base:.2f}" if base else "n/a"
        lines.append(f"| {r.batch} | {r.calls} | {r.seconds:.2f} | {r.per_row:.3f} | {ratio} |")
    return "\n".join(lines)


# -- the command -------------------------------------------------------------------------------
def machine() -> str:
    """One line: CPU model, cores, torch version and threads, and the load average (other jobs
    on the same cores slow the wall times)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return (
        f"{model}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU float32; 1-min load average "
        f"{os.getloadavg()[0]:.2f} at the start"
    )


def write_csv(path: str, runs: Sequence[RunRow], unets: Sequence[UNetRow]) -> None:
    """Both tables' rows in one CSV (``part`` = run or unet)."""
    fields = [
        "part",
        "method",
        "batch",
        "images",
        "seconds",
        "cpu_seconds",
        "images_per_s",
        "peak_mb",
        "growth_mb",
        "calls",
        "seconds_per_row",
    ]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for r in runs:
            writer.writerow(
                {
                    "part": "run",
                    "method": r.method,
                    "batch": r.images_per_batch,
                    "images": r.images,
                    "seconds": r.seconds,
                    "cpu_seconds": r.cpu_seconds,
                    "images_per_s": r.images_per_s,
                    "peak_mb": r.peak_mb,
                    "growth_mb": r.growth_mb,
                }
            )
        for u in unets:
            writer.writerow(
                {
                    "part": "unet",
                    "method": "ffhq_256",
                    "batch": u.batch,
                    "seconds": u.seconds,
                    "calls": u.calls,
                    "seconds_per_row": u.per_row if u.calls else "",
                }
            )


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("image_batches", __doc__)
    parser.add_argument("--images", type=int, default=16, help="digits test images per run")
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=[1, 4, 16],
        help="execution.images_per_batch values (1 is the reference)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=[TARGET_METHOD, "dps"],
        choices=[TARGET_METHOD, "dps"],
        help="methods to run",
    )
    parser.add_argument("--particles", type=int, default=1, help="particles per image")
    parser.add_argument(
        "--device", default="cpu", help="device of the dipswarm runs (cpu, cuda, cuda:N)"
    )
    parser.add_argument("--dps-steps", type=int, default=100, help="DPS num_steps")
    parser.add_argument(
        "--unet-batches", type=int, nargs="+", default=[1, 4, 16, 32], help="UNet rows per call"
    )
    parser.add_argument("--unet-repeats", type=int, default=2, help="timed calls per batch")
    parser.add_argument(
        "--unet-call-limit",
        type=float,
        default=120.0,
        help="seconds: skip a batch whose estimated call is longer",
    )
    parser.add_argument("--skip-run", action="store_true", help="skip part 1 (dipswarm run)")
    parser.add_argument("--skip-unet", action="store_true", help="skip part 2 (FFHQ UNet)")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads per run"
    )
    parser.add_argument("--csv", help="write both tables' rows to this CSV")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one run from a JSON config
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one:
        row = measure_run(json.loads(Path(args.one).read_text()))
        print(json.dumps(asdict(row)))
        return

    print(f"# image_batches on {machine()}\n")
    runs: list[RunRow] = []
    if not args.skip_run:
        table = methods(args.dps_steps)
        print(
            f"## dipswarm run: digits prior, {TASK['name']}, {args.images} test images, "
            f"{args.particles} particle(s)/image, local backend, tracking and LPIPS off; each "
            "configuration in a fresh process after a 1-image warm-up run; images/s = images / "
            "wall time of run_experiment (warm-up excluded); peak RSS sampled every 10 ms "
            "during that run (growth: over the RSS when it started)\n"
        )
        with tempfile.TemporaryDirectory(prefix="image_batches-") as root:
            for name in args.methods:
                for size in args.batches:
                    output = f"{root}/{name}-{size}"
                    raw = experiment(
                        table[name], args.images, size, args.particles, output, args.device
                    )
                    runs.append(measure_in_subprocess(raw, args.threads))
                    print(
                        f"  {name}, {size}/batch: {runs[-1].seconds:.1f} s, load average "
                        f"{os.getloadavg()[0]:.2f}",
                        flush=True,
                    )
            print()
            print(throughput_table(runs))
            print()
            for line in target_lines(runs):
                print(line)
        print()
    unets: list[UNetRow] = []
    if not args.skip_unet:
        from solvers.priors.guided_diffusion import ffhq_256

        print(
            "## guided-diffusion FFHQ 256 UNet (random weights, torch.no_grad, float32): "
            f"median of up to {args.unet_repeats} calls per batch, after one warm-up call\n"
        )
        unets = time_unet(ffhq_256(), args.unet_batches, args.unet_repeats, args.unet_call_limit)
        print(unet_table(unets))
        skipped = [str(u.batch) for u in unets if not u.calls]
        if skipped:
            print(
                f"\nskipped batch {', '.join(skipped)}: estimated call over --unet-call-limit "
                f"{args.unet_call_limit:.0f} s on this CPU"
            )
    print(f"\n1-min load average at the end: {os.getloadavg()[0]:.2f}")
    if args.csv:
        write_csv(args.csv, runs, unets)
        print(f"\nrows written to {args.csv}")


if __name__ == "__main__":
    main()
