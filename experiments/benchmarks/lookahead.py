"""Which mid-run ranking predicts a particle's final quality: its current estimate's measurement
loss, or the loss of the denoised lookahead estimate x0_hat?

Run: ``dipswarm bench lookahead`` (``--help`` for options). Top-k pruning ranks particles by a
measurement loss mid-run, and that ranking need not match the final PSNR. For each task and
solver row of ``image_presets.SETTINGS`` (shipped digits prior, held-out test images) it runs
``--particles`` independent particles per image with ``pruning.diagnostics`` on (no pruning: the
slots keep their particles), and at 25%, 50% and 75% of the steps prints the Spearman rank
correlation, averaged over images, between each particle's loss then and (a) its final PSNR
(sign flipped: a low loss should mean a high PSNR, so +1 is a perfect ranking) and (b) its final
measurement loss, for the current estimate (``rank_by: estimate``) and the lookahead estimate
(``rank_by: lookahead``). The last line counts the (task, solver, step) cells where each ranking
predicts the final PSNR better.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

import torch

import ensemble
from ensemble import EnsembleSettings, EnsembleSpec, OperatorSpec, Pruning
from ensemble.interaction import spearman
from experiments import metrics
from experiments.benchmarks.image_tasks import measurements
from experiments.cli_help import bench_parser
from experiments.image_presets import SETTINGS, build_operator
from experiments.mean_std import format_mean_std
from solvers import SolverSpec

TASKS = ("super_resolution", "inpaint_box", "phase_retrieval")
SOLVERS = ("dps", "daps-hmc")
FRACTIONS = (0.25, 0.5, 0.75)
KINDS = ("estimate", "lookahead")


def correlations(
    result: ensemble.EnsembleResult, truth: torch.Tensor, step: int
) -> dict[str, float]:
    """Spearman correlations at ``step`` of both rankings with -PSNR and the final loss."""
    final_psnr = metrics.psnr(result.all_samples.float(), truth.expand_as(result.all_samples))
    out = {}
    for kind in KINDS:
        key = "particle_loss" if kind == "estimate" else "particle_lookahead_loss"
        then = result.traces[key][step]
        out[f"{kind} vs PSNR"] = spearman(then, (-final_psnr).tolist())
        out[f"{kind} vs loss"] = result.traces[f"rank_corr_{kind}"][step]
    return out


def run_row(
    task: str, label: str, images: torch.Tensor, args: argparse.Namespace
) -> dict[float, dict[str, list[float]]]:
    """Per step fraction, per correlation, the values over images."""
    setting = next(s for s in SETTINGS if s.label == label)
    preset, overrides = setting.resolve(task)
    operator = build_operator(task, images.shape[1:])
    solver = SolverSpec(setting.solver, preset, overrides)
    steps = solver.build().num_steps
    out: dict[float, dict[str, list[float]]] = {f: {} for f in FRACTIONS}
    for i, y in enumerate(measurements(operator, images, args.seed)):
        spec = EnsembleSpec(
            solver=solver,
            prior=args.prior,
            operator=OperatorSpec.of(operator),
            y=y,
            seed=args.seed * 1_000_003 + i,
            settings=EnsembleSettings(
                particles=args.particles, pruning=Pruning(diagnostics=True), progress=False
            ),
        )
        result = ensemble.run(spec)
        for fraction in FRACTIONS:
            values = correlations(result, images[i : i + 1], int(fraction * steps))
            for key, value in values.items():
                out[fraction].setdefault(key, []).append(value)
    return out


def _mean_std(values: Sequence[float]) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "n/a"
    t = torch.tensor(finite, dtype=torch.float64)
    std = float(t.std(unbiased=False)) if len(finite) > 1 else 0.0
    return format_mean_std(float(t.mean()), std, 2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = bench_parser("lookahead", __doc__)
    parser.add_argument("--prior", default="digits", help="shipped pixel prior (default: digits)")
    parser.add_argument("--images", type=int, default=8, help="test images (default: 8)")
    parser.add_argument("--particles", type=int, default=8, help="particles per image (default: 8)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="tasks")
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), help="SETTINGS labels")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from experiments.data import load_builtin_split

    began = time.perf_counter()
    images = load_builtin_split(args.prior, "test").images[: args.images]
    print(
        f"# Lookahead ranking: {args.prior} test split, {images.shape[0]} images, "
        f"{args.particles} particles each, seed {args.seed}; Spearman rho (mean +- std over "
        "images), +1 = the mid-run ranking orders particles as their final PSNR / loss\n"
    )
    columns = [f"{k} vs {m}" for m in ("PSNR", "loss") for k in KINDS]
    print("| task | solver | step | " + " | ".join(columns) + " |")
    print("|---" * (3 + len(columns)) + "|")
    wins = {kind: 0 for kind in KINDS}
    for task in args.tasks:
        for label in args.solvers:
            table = run_row(task, label, images, args)
            for fraction, values in table.items():
                cells = [_mean_std(values[c]) for c in columns]
                print(f"| {task} | {label} | {fraction:.0%} | " + " | ".join(cells) + " |")
                means = {
                    k: _nanmean(values[f"{k} vs PSNR"]) for k in KINDS
                }  # which predicts PSNR better here
                if not any(math.isnan(v) for v in means.values()):
                    wins[max(KINDS, key=lambda k: means[k])] += 1
    print(
        f"\nbetter predictor of the final PSNR: estimate in {wins['estimate']} cells, "
        f"lookahead in {wins['lookahead']} cells; total {time.perf_counter() - began:.0f} s"
    )


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


if __name__ == "__main__":
    main()
