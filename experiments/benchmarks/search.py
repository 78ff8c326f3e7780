"""Search validation: studies that start from a poor config against the reference defaults on
held-out problems, ASHA against no early stopping, and resuming an interrupted study.

Run: ``python -m experiments.benchmarks.search [--out DIR] [--parts gmm,image,asha,resume]``
(``--help`` for the sizes). Every study is a ``dipswarm tune`` study (experiments/tuning.py) on
the local Ray, built from the shipped tune configs with command-line style overrides:

- gmm: DAPS (``gmm/pixel_hmc`` at a fixed annealing length) on the MCGdiff Gaussian mixture,
  started from a poor step size (``lr`` 500x too small), tuned on instances numbered from 10000
  with ASHA; the poor start, DAPS's own defaults (the paper's pixel settings, no preset), the
  hand-tuned reference preset and the study's best config are then scored on held-out
  instances 0, 1, ... (sliced Wasserstein to the exact posterior, and its ratio to the
  perfect-sampler floor).
- image: DAPS pixel HMC on 4x super-resolution with the shipped digit prior, started from a
  poor step size (``lr`` = 1e-6), tuned on validation images; the poor start, the reference
  defaults (the demo's small-image settings) and the best config are scored on test images.
- asha: the GMM study again without early stopping (same trials, sampler seed and instances):
  compute used (instances evaluated) and best value found, against the noise of the objective
  (std over solver seeds of the reference config's tuning value).
- resume: a GMM study interrupted after some finished trials (SIGUSR1 to the driver from inside
  a trial, Tune's graceful stop), then resumed: finished trials before and after, whether any
  was lost, changed or run twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.cli_help import bench_parser
from experiments.mean_std import format_mean_std, sample_mean_std
from experiments.objectives import score_gmm, score_images
from experiments.tune_config import TuneConfig, load_tune_config, method_values
from experiments.tuning import StudyOutcome, run_study

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GMM_CONFIG = CONFIGS / "tune_gmm.yaml"
IMAGE_CONFIG = CONFIGS / "tune_daps_digits.yaml"
GMM_POOR = {"lr": 1e-3}  # the gmm/pixel_hmc preset has 0.5
IMAGE_POOR = {"lr": 1e-6}  # pixel_hmc/super_resolution has 1.04e-4
PARTS = ("gmm", "image", "asha", "resume")
NOISE_SEEDS = 3


def _mean_std(values: Sequence[float], digits: int = 3) -> str:
    """Mean ± sample std of ``values`` as text."""
    return format_mean_std(*sample_mean_std(values), digits)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _yaml_float(value: float) -> str:
    """A float as YAML reads it back as a number (YAML 1.1 takes ``1e-06`` for a string)."""
    return f"{value:.6e}"


def _settings(params: dict[str, Any], names: Sequence[str]) -> str:
    """A few searched values, compactly."""
    return ", ".join(f"{n}={params[n]:.3g}" for n in names if n in params)


# ---------------------------------------------------------------- GMM


def gmm_config(args: argparse.Namespace, name: str, *overrides: str) -> TuneConfig:
    """The shipped GMM tune config with the benchmark's sizes."""
    return load_tune_config(
        GMM_CONFIG,
        [
            f"output={args.out}", f"search.name={name}", f"search.seed={args.seed}",
            f"search.num_samples={args.gmm_trials}", f"gmm.instances={args.gmm_instances}",
            f"methods.daps_hmc.overrides.annealing_steps={args.gmm_annealing}", *overrides,
        ],
    )  # fmt: skip


def gmm_scores(
    config: TuneConfig, params: dict[str, Any], instances: Sequence[int], seed: int | None = None
) -> dict[str, list[float]]:
    """Per-instance SW, SW / floor and seconds of ``params`` on top of the config's method."""
    assert config.gmm is not None
    seed = config.seed if seed is None else seed
    scores = list(score_gmm(config.method, config.gmm, params, seed, instances))
    keys = ("sliced_wasserstein", "sw_over_floor", "nfe", "seconds")
    return {key: [s[key] for s in scores] for key in keys}


def part_gmm(args: argparse.Namespace, study: StudyOutcome, reference: TuneConfig) -> str:
    """Poor start, DAPS defaults, reference preset and searched config on held-out instances."""
    best = study.result.best_config or {}
    held_out = list(range(args.held_out))
    tuning = reference.gmm.instance_seeds()
    names = ("lr", "momentum", "mcmc_steps", "ode_steps", "sigma_min")
    defaults = {**_daps_defaults(), "annealing_steps": args.gmm_annealing}
    candidates = (
        ("poor start", GMM_POOR, float(study.result.trials["sliced_wasserstein"].iloc[0])),
        ("DAPS defaults (no preset)", defaults, None),
        ("reference preset", {}, None),
        ("searched (best trial)", best, study.result.best_value),
    )

    def columns(params: dict[str, Any], value: float | None) -> list[str]:
        if value is None:
            value = statistics.mean(gmm_scores(reference, params, tuning)["sliced_wasserstein"])
        scores = gmm_scores(reference, params, held_out)
        return [
            f"{value:.3f}",
            _mean_std(scores["sliced_wasserstein"]),
            _mean_std(scores["sw_over_floor"], 1),
            f"{statistics.mean(scores['nfe']):.0f}",
        ]

    header = (
        f"tuning SW ({len(tuning)} inst.)",
        f"held-out SW ({len(held_out)} inst.)",
        "held-out SW / floor",
        "NFE / sample",
    )
    table = _comparison(reference, names, header, candidates, columns)
    return (
        f"### (a) GMM d={reference.gmm.d}, d_y={reference.gmm.d_y}: DAPS gmm/pixel_hmc, "
        f"{args.gmm_annealing} annealing steps, {reference.gmm.particles} particles\n\n"
        f"Study {study.result.study_name}: {len(study.result.trials)} trials (TPE, ASHA), "
        f"compute {study.result.total_steps} instances, tuning instances {tuning[0]}-"
        f"{tuning[-1]}; held-out instances 0-{args.held_out - 1}.\n\n" + table
    )


def _daps_defaults() -> dict[str, Any]:
    """Every field of DAPS's own defaults (the paper's pixel settings), to replace a preset."""
    import solvers

    return dataclasses.asdict(solvers.build("daps").config)


def _method_values(config: TuneConfig, params: dict[str, Any]) -> dict[str, Any]:
    """The method's full settings with ``params`` applied."""
    method = dataclasses.replace(config.method, spec=config.method.spec.with_overrides(params))
    return method_values(method)


def _comparison(
    reference: TuneConfig,
    names: Sequence[str],
    header: Sequence[str],
    candidates: Sequence[tuple[str, dict[str, Any], float | None]],
    columns: Callable[[dict[str, Any], float | None], list[str]],
) -> str:
    """The table of ``candidates`` (label, params, tuning value or None): a row each with the
    label, the ``names`` settings, then ``columns(params, value)`` under ``header``."""
    rows = [
        [label, _settings(_method_values(reference, params), names), *columns(params, value)]
        for label, params, value in candidates
    ]
    return _table(["config", "settings", *header], rows)


def part_asha(
    args: argparse.Namespace, with_asha: StudyOutcome, without: StudyOutcome, reference: TuneConfig
) -> str:
    """Compute and best value with and without early stopping, against the objective's noise."""
    tuning = reference.gmm.instance_seeds()
    noise = [
        statistics.mean(gmm_scores(reference, {}, tuning, seed)["sliced_wasserstein"])
        for seed in range(reference.seed, reference.seed + NOISE_SEEDS)
    ]
    rows = []
    for label, outcome in (("ASHA", with_asha), ("none", without)):
        trials = outcome.result.trials
        counts = trials["status"].value_counts().to_dict()
        held = gmm_scores(reference, outcome.result.best_config or {}, list(range(args.held_out)))
        rows.append(
            [
                label,
                f"{len(trials)} ({counts.get('completed', 0)} completed, "
                f"{counts.get('stopped', 0)} stopped)",
                outcome.result.total_steps,
                f"{outcome.result.best_value:.3f}",
                _mean_std(held["sliced_wasserstein"]),
                f"{trials['time_s'].sum():.0f}",
            ]
        )
    saved = 1 - with_asha.result.total_steps / without.result.total_steps
    gap = abs(with_asha.result.best_value - without.result.best_value)
    header = [
        "early stopping", "trials", "compute (instances)", "best tuning SW",
        f"its held-out SW ({args.held_out} inst.)", "trial seconds",
    ]  # fmt: skip
    return (
        f"### (c) ASHA (grace 1, reduction 3, max_t {len(tuning)}) vs no early stopping, "
        f"{args.gmm_trials} trials each, same sampler seed\n\n"
        + _table(header, rows)
        + f"\n\nCompute saved by ASHA: {100 * saved:.0f}%. Best values differ by {gap:.3f}; "
        f"noise of the objective (reference config, tuning mean over {NOISE_SEEDS} solver "
        f"seeds): {_mean_std(noise)} (std {statistics.stdev(noise):.3f})."
    )


# ---------------------------------------------------------------- resume


@dataclass(frozen=True)
class InterruptAfter:
    """An objective that logs each finished trial; the first trial to start after ``after``
    finished ones stops the study like Ctrl-C would (SIGUSR1 to the driver: Tune saves its
    state and returns), once."""

    objective: Any
    after: int
    driver: int
    folder: str

    def __call__(self, params: dict[str, Any], report: Any) -> Any:
        from ray import tune

        log = Path(self.folder, "finished.log")
        done = log.read_text().split() if log.exists() else []
        if self.driver and len(done) >= self.after and _first_time(Path(self.folder, "stop")):
            os.kill(self.driver, signal.SIGUSR1)
            time.sleep(120)  # killed with the trial when Tune stops
        result = self.objective(params, report)
        with log.open("a") as f:
            f.write(tune.get_context().get_trial_id() + "\n")
        return result


def _first_time(marker: Path) -> bool:
    """True for the first caller only (atomic file creation)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def part_resume(args: argparse.Namespace) -> str:
    """Interrupt a study, resume it, count finished trials and check none is lost or redone."""
    config = gmm_config(
        args, "resume", "search.asha=null", f"search.num_samples={args.resume_trials}",
        f"gmm.instances={args.resume_instances}",
    )  # fmt: skip
    folder = Path(args.out) / "resume-log"
    folder.mkdir(parents=True, exist_ok=True)
    wrapped = InterruptAfter(config.objective(), args.interrupt_after, os.getpid(), str(folder))
    first = run_study(config, progress=False, objective=wrapped).result
    resumed = dataclasses.replace(config, search=dataclasses.replace(config.search, resume=True))
    again = dataclasses.replace(wrapped, driver=0)
    second = run_study(resumed, progress=False, objective=again).result
    kept = first.trials[first.trials["status"] == "completed"].set_index("trial_id")
    after = second.trials.set_index("trial_id")
    lost = [t for t in kept.index if t not in after.index]
    changed = [
        t for t in kept.index if t in after.index
        and after.at[t, "sliced_wasserstein"] != kept.at[t, "sliced_wasserstein"]
    ]  # fmt: skip
    runs = Counter((folder / "finished.log").read_text().split())
    repeated = sorted(t for t, n in runs.items() if n > 1)
    numbers = [t.number for t in second.optuna_study().trials]
    rows = []
    for label, result in (("after the interruption", first), ("after resume", second)):
        counts = result.trials["status"].value_counts().to_dict()
        rows.append(
            [
                label,
                len(result.trials),
                counts.get("completed", 0),
                counts.get("unfinished", 0),
                "yes" if result.interrupted else "no",
            ]
        )
    header = ["state", "trials", "completed", "unfinished (cut off)", "interrupted"]
    verdict = (
        f"finished trials kept: {len(kept) - len(lost)}/{len(kept)} (values unchanged: "
        f"{len(kept) - len(lost) - len(changed)}); trials run to their end more than once: "
        f"{len(repeated)}; Optuna trials {len(numbers)} with distinct numbers: "
        f"{len(set(numbers)) == len(numbers)}; same study: "
        f"{first.study_name == second.study_name}"
    )
    return (
        f"### (d) Resume: {args.resume_trials} trials x {args.resume_instances} instances, "
        f"SIGUSR1 after {args.interrupt_after} finished trials\n\n"
        + _table(header, rows)
        + f"\n\n{verdict}."
    )


# ---------------------------------------------------------------- image task


def part_image(args: argparse.Namespace) -> str:
    """Poor start, reference defaults and the searched config on test images."""
    base = [
        f"output={args.out}", "search.name=image", f"search.seed={args.seed}",
        f"search.num_samples={args.image_trials}", f"data.images={args.val_images}",
    ]  # fmt: skip
    reference = load_tune_config(IMAGE_CONFIG, base)
    study_config = load_tune_config(
        IMAGE_CONFIG, [*base, f"methods.daps_hmc.overrides.lr={_yaml_float(IMAGE_POOR['lr'])}"]
    )
    study = run_study(study_config, progress=False).result
    best = study.best_config or {}
    experiment = reference.experiment
    test = dataclasses.replace(
        experiment,
        data=dataclasses.replace(experiment.data, split="test", images=args.test_images),
    )
    names = ("lr", "lr_min_ratio", "momentum", "tau")
    val_reference = statistics.mean(s["psnr"] for s in score_images(experiment, {}))
    candidates = (
        ("poor start", IMAGE_POOR, float(study.trials["psnr"].iloc[0])),
        ("reference defaults (demo settings)", {}, val_reference),
        ("searched (best trial)", best, study.best_value),
    )

    def columns(params: dict[str, Any], value: float | None) -> list[str]:
        scores = list(score_images(test, params))
        return [
            f"{value:.2f}",
            _mean_std([s["psnr"] for s in scores], 2),
            _mean_std([s["ssim"] for s in scores], 3),
            f"{statistics.mean(s['seconds'] for s in scores):.1f}",
        ]

    header = (
        f"val PSNR ({args.val_images} img.)",
        f"test PSNR ({args.test_images} img.)",
        "test SSIM",
        "s / image",
    )
    table = _comparison(reference, names, header, candidates, columns)
    return (
        "### (b) Digits 32x32, super-resolution x4 (sigma_y 0.05): DAPS pixel HMC, 25 annealing "
        "x 20 HMC steps\n\n"
        f"Study {study.study_name}: {len(study.trials)} trials (TPE, ASHA), compute "
        f"{study.total_steps} validation images.\n\n" + table
    )


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = bench_parser("search", __doc__)
    parser.add_argument("--out", default=None, help="folder for the studies (default: new)")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed of every study")
    parser.add_argument("--gmm-trials", type=int, default=16, help="trials per GMM study")
    parser.add_argument("--gmm-instances", type=int, default=6, help="tuning instances")
    parser.add_argument("--gmm-annealing", type=int, default=100, help="DAPS annealing steps")
    parser.add_argument("--held-out", type=int, default=10, help="held-out GMM instances")
    parser.add_argument("--image-trials", type=int, default=12, help="trials of the image study")
    parser.add_argument("--val-images", type=int, default=3, help="validation images per trial")
    parser.add_argument("--test-images", type=int, default=20, help="held-out test images")
    parser.add_argument("--resume-trials", type=int, default=6, help="trials of the resume study")
    parser.add_argument(
        "--resume-instances", type=int, default=2, help="GMM instances of the resume study"
    )
    parser.add_argument(
        "--interrupt-after", type=int, default=3, help="finished trials before the interruption"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the chosen parts and print their tables (each as soon as it is done)."""
    args = build_parser().parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"unknown part(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}")
    if args.out is None:
        args.out = str(Path("dipswarm-bench-search", time.strftime("%Y%m%d-%H%M%S")).resolve())
    print(f"## Search benchmark ({', '.join(parts)}); studies in {args.out}\n", flush=True)
    began = time.perf_counter()
    reference = gmm_config(args, "reference") if {"gmm", "asha"} & set(parts) else None
    poor = f"methods.daps_hmc.overrides.lr={_yaml_float(GMM_POOR['lr'])}"
    with_asha = None
    for part in parts:
        start = time.perf_counter()
        if part in ("gmm", "asha") and with_asha is None:
            with_asha = run_study(gmm_config(args, "gmm_asha", poor), progress=False)
        if part == "gmm":
            text = part_gmm(args, with_asha, reference)
        elif part == "asha":
            without = run_study(
                gmm_config(args, "gmm_no_asha", poor, "search.asha=null"), progress=False
            )
            text = part_asha(args, with_asha, without, reference)
        elif part == "image":
            text = part_image(args)
        else:
            text = part_resume(args)
        print(f"{text}\n\n({part}: {time.perf_counter() - start:.0f} s)\n", flush=True)
    print(f"total {time.perf_counter() - began:.0f} s", flush=True)


if __name__ == "__main__":
    main()
