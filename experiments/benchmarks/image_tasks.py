"""Image benchmark: every solver on the 8 seed tasks with the shipped 32x32 priors, held-out
test images, against naive baselines that use no prior.

Run: ``python -m experiments.benchmarks.image_tasks`` (``--help`` for options). For each task
(geometry and sigma_y in experiments/image_presets.py) it prints PSNR / SSIM / LPIPS mean +- std
over the test images, the measurement loss ||A(x) - y||^2, NFE (denoiser calls counted by the
prior) and seconds per image, for each solver row of ``image_presets.SETTINGS`` and each naive
baseline. LPIPS uses a seeded random VGG backbone (no download offline): its numbers rank
images but are not comparable with published LPIPS. With ``--particles`` > 1 an image's metrics
are the mean over its particles. Phase retrieval also gets a flip-invariant PSNR (the better of
the estimate and its 180-degree rotation, an ambiguity of the measurement), labelled as such.
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from experiments import metrics
from experiments.cli_help import bench_parser
from experiments.image_presets import (
    NONLINEAR_BLUR_NOTE,
    SETTINGS,
    SIGMA_Y,
    TASK_PARAMS,
    TASKS,
    SolverSetting,
    build_operator,
)
from experiments.mean_std import format_mean_std
from operators import Operator

LPIPS_NET = "vgg"  # DAPS's backbone; its random version (no download offline)
FLIP_COLUMN = "PSNR flip-inv. (extra)"
LATENT_PRIORS = {"digits": "digits_latent"}  # pixel prior / dataset -> its latent prior
TIKHONOV_DAMPING = 0.03  # best of {0.003, 0.01, 0.03, 0.1, 0.3} on 16 validation digits
INTERP_STD = 1.0  # Gaussian std (pixels) of the normalised-convolution inpainting fill


# -- naive baselines (no prior) -------------------------------------------------------------------
def bicubic_upsample(y: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bicubic interpolation of the low-resolution measurement to the image size."""
    return F.interpolate(y, size=tuple(size), mode="bicubic", align_corners=False).clamp(-1, 1)


def fill_missing(y: torch.Tensor, mask: torch.Tensor, std: float = INTERP_STD) -> torch.Tensor:
    """Observed pixels kept; missing ones by normalised Gaussian convolution of the observed
    ones, or the mean observed value where no observed pixel is near (inside a box)."""
    radius = max(1, math.ceil(3 * std))
    t = torch.arange(-radius, radius + 1, dtype=y.dtype)
    g = torch.exp(-(t**2) / (2 * std**2))
    kernel = (g[:, None] * g[None, :]).view(1, 1, 2 * radius + 1, 2 * radius + 1)
    m = mask.to(y.dtype).expand_as(y)
    channels = y.shape[1]
    kernel = kernel.expand(channels, 1, -1, -1)
    weight = F.conv2d(m, kernel, padding=radius, groups=channels)
    value = F.conv2d(y * m, kernel, padding=radius, groups=channels)
    mean = (y * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)
    near = weight > 1e-6  # some observed pixel within 3 std
    fill = torch.where(near, value / weight.clamp_min(1e-12), mean.view(-1, 1, 1, 1))
    return torch.where(m > 0, y, fill)


def phase_constant(operator: Operator, y: torch.Tensor) -> torch.Tensor:
    """The constant image whose brightness matches the measured zero-frequency magnitude."""
    _, height, width = operator.input_shape
    _, out_h, out_w = operator.output_shape
    dc = y[:, :, out_h // 2, out_w // 2]  # fftshift puts frequency 0 at the centre
    mean_unit = dc * math.sqrt(out_h * out_w) / (height * width)  # mean of (x + 1) / 2
    value = (2 * mean_unit - 1).clamp(-1, 1)
    return value.view(-1, y.shape[1], 1, 1).expand(-1, -1, height, width).clone()


def naive_baselines(task: str, operator: Operator, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Estimates without a prior, by name, for ``task``."""
    shape = operator.input_shape
    if task == "super_resolution":
        return {"naive: bicubic upsampling": bicubic_upsample(y, shape[1:])}
    if task in ("inpaint_box", "inpaint_random"):
        return {"naive: interpolation fill": fill_missing(y, operator.mask)}
    if task in ("gaussian_blur", "motion_blur"):
        return {
            "naive: y (no deblurring)": y.clone(),
            f"naive: Tikhonov CG (damping {TIKHONOV_DAMPING})": _tikhonov(operator, y),
        }
    if task == "phase_retrieval":
        return {"naive: constant image (measured mean)": phase_constant(operator, y)}
    if task == "nonlinear_blur":
        return {"naive: y (channel mean)": y.mean(dim=1, keepdim=True)}
    if task == "hdr":
        return {
            "naive: y / 2": y / TASK_PARAMS["hdr"]["factor"],
            "naive: y (clipped observation)": y.clamp(-1, 1),
        }
    raise ValueError(f"no naive baseline for task {task!r}")


def _tikhonov(operator: Operator, y: torch.Tensor) -> torch.Tensor:
    return operator.pseudo_inverse(y, damping=TIKHONOV_DAMPING).clamp(-1, 1)


# -- runs -----------------------------------------------------------------------------------------
@dataclass
class Record:
    """Per-image results of one method on one task."""

    task: str
    method: str
    prior: str
    rows: list[dict[str, float]] = field(default_factory=list)
    stopped: int = 0

    def mean_std(self, key: str) -> tuple[float, float]:
        values = torch.tensor([r[key] for r in self.rows], dtype=torch.float64)
        std = float(values.std(unbiased=False)) if len(values) > 1 else 0.0
        return float(values.mean()), std


def measurements(operator: Operator, images: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """y_i = A(x_i) + sigma_y n_i, image i's noise from a generator seeded by (seed, i)."""
    out = []
    with torch.no_grad():
        for i in range(images.shape[0]):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + i)
            out.append(operator.measure(images[i : i + 1], generator))
    return out


def run_baselines(
    task: str, operator: Operator, images: torch.Tensor, ys: list[torch.Tensor]
) -> list[Record]:
    """Every naive baseline of ``task`` on every image."""
    records: dict[str, Record] = {}
    for i, y in enumerate(ys):
        start = time.perf_counter()
        estimates = naive_baselines(task, operator, y)
        seconds = (time.perf_counter() - start) / len(estimates)
        for name, estimate in estimates.items():
            row = metrics.image_metrics(
                estimate, images[i : i + 1], operator, y, LPIPS_NET, True, task == "phase_retrieval"
            )
            row.update(nfe=0.0, seconds=seconds)
            records.setdefault(name, Record(task, name, "none")).rows.append(row)
    return list(records.values())


def run_solver(
    setting: SolverSetting,
    task: str,
    prior: Any,
    prior_name: str,
    operator: Operator,
    images: torch.Tensor,
    ys: list[torch.Tensor],
    particles: int,
    seed: int,
) -> Record:
    """One solver row of the settings table on every image (a fresh solver per image)."""
    import solvers

    preset, overrides = setting.resolve(task)
    record = Record(task, setting.label, prior_name)
    for i, y in enumerate(ys):
        solver = solvers.build(setting.solver, preset, **overrides)
        result = solver.sample(prior, operator, y, n=particles, seed=seed * 1_000_003 + i)
        samples = result.samples.to(torch.float32)
        bad = ~torch.isfinite(samples.flatten(1)).all(1)
        record.stopped += sum(s != "ok" for s in result.status)
        samples = torch.where(bad.view(-1, 1, 1, 1), torch.zeros_like(samples), samples)
        row = metrics.image_metrics(
            samples, images[i : i + 1], operator, y, LPIPS_NET, True, task == "phase_retrieval"
        )
        row.update(nfe=float(result.nfe), seconds=result.seconds)
        record.rows.append(row)
    return record


@functools.cache
def _load_cached(name: str, options: tuple[tuple[str, Any], ...]) -> Any:
    from solvers.priors import load

    return load(name, **dict(options))


def load_prior(name: str, options: dict[str, Any]) -> tuple[str, Any]:
    """(label, prior): one instance per name and loader options; the label names the options."""
    prior = _load_cached(name, tuple(sorted(options.items())))
    label = name + "".join(f", {k}={v}" for k, v in options.items())
    return label, prior


def selected_settings(tasks: Sequence[str], names: Sequence[str] | None) -> list[SolverSetting]:
    """Solver rows named in ``names`` (all when None) that apply to at least one task."""
    known = [s.label for s in SETTINGS]
    if names is not None:
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise SystemExit(f"unknown solver row(s) {unknown}; rows: {', '.join(known)}")
    chosen = [s for s in SETTINGS if names is None or s.label in names]
    return [s for s in chosen if any(t in s.tasks for t in tasks)]


# -- printing -------------------------------------------------------------------------------------
def _fmt(record: Record, key: str, digits: int) -> str:
    return format_mean_std(*record.mean_std(key), digits)


def print_settings(settings: Sequence[SolverSetting], tasks: Sequence[str]) -> None:
    """The settings table: preset and overrides per solver row (and per-task extras)."""
    print("| row | solver | prior | preset | overrides (all tasks) | per-task overrides |")
    print("|---|---|---|---|---|---|")
    for s in settings:
        extras = "; ".join(f"{t}: {_compact(o)}" for t, o in s.per_task.items() if t in tasks and o)
        applies = "" if s.tasks == TASKS else f" (tasks: {', '.join(s.tasks)})"
        prior = s.prior + (f" ({_compact(s.prior_options)})" if s.prior_options else "")
        print(
            f"| {s.label} | {s.solver}{applies} | {prior} | {s.preset or '-'} | "
            f"{_compact(s.overrides)} | {extras or '-'} |"
        )
    print()


def _compact(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in overrides.items()) or "-"


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def print_task_table(task: str, records: Sequence[Record], best_naive: float) -> None:
    """One Markdown table for ``task``."""
    flip = task == "phase_retrieval"
    lpips_column = f"LPIPS (random {LPIPS_NET}, not comparable to papers)"
    header = ["method", "prior", "PSNR", "SSIM", lpips_column, "||A(x)-y||^2", "NFE", "s/image"]
    if flip:
        header.insert(3, FLIP_COLUMN)
    header.append("PSNR > best naive")
    print(f"### {task}\n")
    print("| " + " | ".join(header) + " |")
    print("|---|---|" + "---:|" * (len(header) - 2))
    for r in records:
        cells = [r.method, r.prior, _fmt(r, "psnr", 2)]
        if flip:
            cells.append(_fmt(r, "psnr_flip", 2))
        cells += [_fmt(r, "ssim", 3), _fmt(r, "lpips", 3), _fmt(r, "measurement_loss", 2)]
        cells += [f"{r.mean_std('nfe')[0]:.0f}", f"{r.mean_std('seconds')[0]:.2f}"]
        naive = r.prior == "none"
        cells.append("-" if naive else ("yes" if r.mean_std("psnr")[0] > best_naive else "NO"))
        print("| " + " | ".join(cells) + " |")
    stopped = [f"{r.method} ({r.stopped})" for r in records if r.stopped]
    if stopped:
        print(f"\nparticles stopped on non-finite values: {', '.join(stopped)}")
    print()


def print_summary(records: Sequence[Record], tasks: Sequence[str]) -> None:
    """PSNR mean per method and task, the best naive baseline first; * marks a loss to it."""
    by_task = {t: [r for r in records if r.task == t] for t in tasks}
    best = {
        t: max(r.mean_std("psnr")[0] for r in rs if r.prior == "none") for t, rs in by_task.items()
    }
    methods = list(dict.fromkeys(r.method for r in records if r.prior != "none"))
    print("### Summary: mean PSNR (dB); * = not above the best naive baseline\n")
    print("| method | " + " | ".join(tasks) + " |")
    print("|---|" + "---:|" * len(tasks))
    print("| best naive | " + " | ".join(f"{best[t]:.2f}" for t in tasks) + " |")
    for method in methods:
        cells = []
        for t in tasks:
            match = [r for r in by_task[t] if r.method == method]
            if not match:
                cells.append("n/a")
                continue
            value = match[0].mean_std("psnr")[0]
            cells.append(f"{value:.2f}" + ("" if value > best[t] else "*"))
        print(f"| {method} | " + " | ".join(cells) + " |")
    print()


def write_csv(path: str, records: Sequence[Record]) -> None:
    """One line per (task, method, image) with every metric."""
    keys = ["psnr", "psnr_flip", "ssim", "lpips", "measurement_loss", "nfe", "seconds"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "method", "prior", "image", *keys])
        for r in records:
            for i, row in enumerate(r.rows):
                values = [row.get(k, "") for k in keys]
                writer.writerow([r.task, r.method, r.prior, i, *values])


# -- entry point ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser("image_tasks", __doc__)
    parser.add_argument("--images", type=int, default=4, help="test images per task")
    parser.add_argument(
        "--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="seed tasks to run"
    )
    parser.add_argument(
        "--solvers", nargs="+", default=None, help="solver rows (default: all that apply)"
    )
    parser.add_argument(
        "--prior", choices=["digits", "faces"], default="digits", help="pixel prior and dataset"
    )
    parser.add_argument("--particles", type=int, default=1, help="particles per image")
    parser.add_argument("--seed", type=int, default=0, help="seed of measurements and solvers")
    parser.add_argument("--csv", default=None, help="write per-image metrics to this CSV file")
    args = parser.parse_args(argv)
    if args.images < 1 or args.particles < 1:
        parser.error("--images and --particles must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from experiments.data import load_builtin_split

    start = time.perf_counter()
    split = load_builtin_split(args.prior, "test")
    images = split.images[: args.images]
    settings = selected_settings(args.tasks, args.solvers)
    latent_name = LATENT_PRIORS.get(args.prior)
    if latent_name is None:
        settings = [s for s in settings if s.prior == "pixel"]
    names = {"pixel": args.prior, "latent": latent_name}
    priors = {s.label: load_prior(names[s.prior], s.prior_options) for s in settings}
    print(
        f"# Image tasks: {args.prior} test split, {images.shape[0]} images "
        f"({', '.join(split.names[: images.shape[0]])}), {args.particles} particle(s), "
        f"sigma_y = {SIGMA_Y} in [-1, 1] units, seed {args.seed}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} thread(s), CPU\n"
    )
    if latent_name is None:
        print(f"(latent solvers skipped: no latent prior for {args.prior})\n")
    print(f"Task geometry (32x32): {TASK_PARAMS}\n\n{NONLINEAR_BLUR_NOTE}\n")
    print_settings(settings, args.tasks)
    records: list[Record] = []
    for task in args.tasks:
        records += run_task(task, settings, priors, images, args)
    print_summary(records, args.tasks)
    if args.csv:
        write_csv(args.csv, records)
        print(f"per-image metrics written to {args.csv}")
    print(f"total time {time.perf_counter() - start:.0f} s")


def run_task(
    task: str,
    settings: Sequence[SolverSetting],
    priors: dict[str, tuple[str, Any]],
    images: torch.Tensor,
    args: argparse.Namespace,
) -> list[Record]:
    """Baselines and solvers on one task; prints its table."""
    operator = build_operator(task, images.shape[1:])
    ys = measurements(operator, images, args.seed)
    records = run_baselines(task, operator, images, ys)
    best_naive = max(r.mean_std("psnr")[0] for r in records)
    for setting in settings:
        if task not in setting.tasks:
            continue
        prior_name, prior = priors[setting.label]
        records.append(
            run_solver(
                setting, task, prior, prior_name, operator, images, ys, args.particles, args.seed
            )
        )
    print_task_table(task, records, best_naive)
    return records


if __name__ == "__main__":
    main()
