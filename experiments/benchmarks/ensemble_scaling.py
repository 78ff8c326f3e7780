"""Ensemble scaling: in-process batch vs Ray with 1 and 2 workers, side by side in one run.

For one solver, prior and N, each backend runs the same ensemble (repulsion on, so features
and pushes cross the driver every step; checkpoints every 10 steps) and reports samples per
second, the step time, the coordination time per step (driver wall time of the step loop minus
the slowest worker's compute: transfers, waiting, driver-side interaction, checkpoints) as a
share of the step, and bytes moved per step. Then it measures, through Ray on this machine,
what the same protocol would move for FFHQ 256 pixel particles with DINO ViT-S/16 features.

Run: ``python -m experiments.benchmarks.ensemble_scaling`` (or ``dipswarm bench
ensemble_scaling``). Target (issue 5): coordination under 5% of the step time at N = 8.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import torch

import ensemble
import operators
from ensemble import EnsembleSettings, EnsembleSpec, OperatorSpec, Repulsion
from ensemble.payload import nbytes
from ensemble.ray_runtime import ensure_ray
from experiments.cli_help import bench_parser
from solvers import SolverSpec

FFHQ_SHAPE = (3, 256, 256)
DINO_FEATURES = 384  # ViT-S/16 CLS token


def problem_spec(args: argparse.Namespace) -> EnsembleSpec:
    """The benchmark ensemble on the shipped prior (one held-out digit, random inpainting)."""
    from experiments.data import load_builtin_split

    operator = operators.build("inpaint_random", shape=(1, 32, 32), seed=0)
    image = load_builtin_split(args.prior, "test").images[:1]
    y = operator.measure(image, torch.Generator().manual_seed(0))
    overrides = {"annealing_steps": args.steps, "mcmc_steps": args.mcmc, "sigma_max": 20.0}
    return EnsembleSpec(
        solver=SolverSpec("daps", "pixel_hmc/inpaint_random", overrides),
        prior=args.prior,
        operator=OperatorSpec.of(operator),
        y=y,
        settings=EnsembleSettings(
            particles=args.particles,
            repulsion=Repulsion(weight=args.repulsion),
            checkpoint_every=10,
            progress=False,
        ),
    )


def measure(spec: EnsembleSpec) -> dict[str, float]:
    """One run's figures (wall includes starting the workers and loading the prior)."""
    began = time.perf_counter()
    result = ensemble.run(spec)
    wall = time.perf_counter() - began
    steps = len(result.traces["alive"])
    stats = result.stats
    return {
        "wall": wall,
        "samples_per_s": spec.settings.particles / wall,
        "loop_samples_per_s": spec.settings.particles / stats["loop_seconds"],
        "step_ms": 1e3 * stats["loop_seconds"] / steps,
        "compute_ms": 1e3 * stats["compute_seconds"] / steps,
        "coordination_ms": 1e3 * stats["coordination_seconds"] / steps,
        "share": stats["coordination_seconds"] / stats["loop_seconds"],
        "bytes_per_step": stats["bytes_per_step"],
    }


def backends_table(args: argparse.Namespace) -> list[tuple[str, dict[str, float]]]:
    spec = problem_spec(args)
    variants = [
        ("local (1 process, batched)", spec),
        ("ray, 1 worker", spec.with_settings(backend="ray", workers=1, cpus_per_worker=1.0)),
        ("ray, 2 workers", spec.with_settings(backend="ray", workers=2, cpus_per_worker=1.0)),
    ]
    rows: dict[str, list[dict[str, float]]] = {name: [] for name, _ in variants}
    for _ in range(args.repeats):  # interleaved, so that load changes hit every variant alike
        for name, variant in variants:
            rows[name].append(measure(variant))
    return [(name, _median(runs)) for name, runs in rows.items()]


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


class _Echo:
    """A Ray actor that returns tensors of a given size (stands in for a particle group)."""

    def __init__(self, size: int) -> None:
        self.tensor = torch.zeros(size, dtype=torch.uint8)

    def reply(self, received: Any) -> torch.Tensor:
        return self.tensor


def ffhq_transfer(particles: int, workers: int, repeats: int) -> list[tuple[str, int, float]]:
    """Bytes and measured Ray round-trip time of each per-step exchange at FFHQ 256 sizes."""
    import ray

    per = particles // workers
    feature_bytes = per * (DINO_FEATURES * 8 + 8 + 8)  # float64 features, loss, status
    push_bytes = per * DINO_FEATURES * 8
    state = torch.zeros(2, *FFHQ_SHAPE)  # x and x0 in float32
    generator_state = torch.Generator().get_state()
    checkpoint_bytes = per * (nbytes(state) + nbytes(generator_state))
    exchanges = [
        ("features + losses up, pushes down (every step)", feature_bytes, push_bytes),
        ("checkpoint of every particle (every 10 steps)", checkpoint_bytes, 0),
    ]
    out = []
    for label, up, down in exchanges:
        actors = [ray.remote(_Echo).options(num_cpus=0).remote(up) for _ in range(workers)]
        message = torch.zeros(down, dtype=torch.uint8)
        ray.get([a.reply.remote(message) for a in actors])  # warm-up

        def barrier(actors: list[Any] = actors, message: torch.Tensor = message) -> None:
            ray.get([a.reply.remote(message) for a in actors])

        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            barrier()
            times.append(time.perf_counter() - began)
        for actor in actors:
            ray.kill(actor)
        out.append((label, workers * (up + down), 1e3 * statistics.median(times)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("ensemble_scaling", __doc__)
    parser.add_argument("--prior", default="digits", help="shipped pixel prior")
    parser.add_argument("--particles", type=int, default=8, help="particles per ensemble")
    parser.add_argument("--steps", type=int, default=20, help="DAPS annealing steps")
    parser.add_argument("--mcmc", type=int, default=4, help="DAPS MCMC steps per annealing step")
    parser.add_argument("--repulsion", type=float, default=50.0, help="repulsion weight")
    parser.add_argument("--repeats", type=int, default=2, help="runs per backend (median)")
    args = parser.parse_args(argv)

    import ray

    ensure_ray(num_cpus=2)
    print(
        f"## Ensemble scaling: DAPS pixel HMC on '{args.prior}', inpaint_random 32x32, "
        f"N = {args.particles}, {args.steps} annealing x {args.mcmc} MCMC steps, pixel-feature "
        f"repulsion, checkpoints every 10 steps; torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} cores; median of {args.repeats} interleaved runs\n"
    )
    print(
        "| backend | wall s (with start-up) | samples/s | samples/s (step loop) | step ms | "
        "compute ms | coordination ms | coordination share | bytes/step |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in backends_table(args):
        print(
            f"| {name} | {row['wall']:.1f} | {row['samples_per_s']:.2f} | "
            f"{row['loop_samples_per_s']:.2f} | {row['step_ms']:.1f} | "
            f"{row['compute_ms']:.1f} | {row['coordination_ms']:.2f} | {100 * row['share']:.1f}% "
            f"| {row['bytes_per_step']:.0f} |"
        )
    print(
        f"\n## What FFHQ 256 pixel particles would move (N = {args.particles}, 2 workers, DINO "
        "ViT-S/16 features), measured as Ray round trips of those sizes here\n"
    )
    print("| exchange | bytes | round trip ms |")
    print("|---|---:|---:|")
    for label, size, ms in ffhq_transfer(args.particles, 2, repeats=10):
        print(f"| {label} | {size} | {ms:.2f} |")
    ray.shutdown()


if __name__ == "__main__":
    main()
