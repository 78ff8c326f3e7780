"""SMC benchmark: do the weighted samplers (TDS, FPS-SMC) converge to the exact posterior as the
number of particles grows, and do they beat single-chain solvers at equal NFE per sample?

Run: ``dipswarm bench smc`` (``--help`` for options). Two parts.

1. GMM exact posterior (docs/gmm_benchmark.md, the protocol and floor of ``dipswarm bench
   gmm``): for each N in ``--particles``, every weighted entry runs N particles per instance as
   one ensemble (ESS-triggered systematic resampling, ``smc.ess_threshold`` 0.5) and returns
   them resampled by their final weights to N outputs; every single-chain entry draws N
   independent samples. Both are scored by SW / floor against N exact posterior samples (the
   floor: two independent exact sets of N). NFE per output sample is the denoiser calls of one
   particle or chain. The coverage columns give the share of exact posterior draws inside the
   outputs' central 50% / 90% intervals (nominal: 50 / 90). The tables end with a check of the
   targets: SW / floor falls with N; at the largest N, within 2x the floor at d = 8 and 5x at
   d = 80; better than every single-chain entry in at least 5 of the 6 cells.
2. Digits phase retrieval (shipped 32x32 prior, ``--digits-images`` test images): the share of
   images whose sample has the right orientation (PSNR above that of its 180-degree rotation,
   an ambiguity of the measurement), for TDS with N particles returning its heaviest-weighted
   particle, against the best (lowest measurement loss) of N independent DAPS chains with the
   same NFE per chain.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence

import torch

import ensemble
import solvers
from ensemble import EnsembleSettings, EnsembleSpec, OperatorSpec
from experiments import metrics
from experiments.benchmarks import gmm as gmm_bench
from experiments.benchmarks.image_tasks import measurements
from experiments.cli_help import bench_parser
from experiments.image_presets import build_operator
from experiments.metrics import COVERAGE_LEVELS, coverage_name

WEIGHTED = ("tds:gmm", "fps_smc:gmm")
# Single-chain solvers at the weighted presets' NFE per sample (the gmm_nfe100 presets:
# re-tuned at 100 denoiser calls per sample, docs/gmm_benchmark.md).
SINGLE_CHAIN = ("dps:gmm_nfe100", "daps:gmm_nfe100", "cdps:gmm_nfe100")
PARTICLES = (64, 256, 1024, 4096)
DIGITS_PARTICLES = (4, 16, 64)
# TDS on digits phase retrieval and DAPS at the same NFE per chain (75: DAPS's 25 annealing
# steps x 3 ODE steps of experiments/image_presets.py; TDS: 75 steps, one call each).
DIGITS_TDS = solvers.SolverSpec("tds", "pixel/phase_retrieval")
DIGITS_DAPS = solvers.SolverSpec(
    "daps",
    "pixel_hmc/phase_retrieval",
    {"annealing_steps": 25, "sigma_max": 20.0, "ode_steps": 3, "mcmc_steps": 20},
)
TARGETS = {8: 2.0, 80: 5.0}  # SW / floor at the largest N


# -- part 1: the GMM exact posterior ---------------------------------------------------------
def gmm_entries(args: argparse.Namespace) -> list[gmm_bench.Entry]:
    """The weighted and single-chain entries on the pixel bed (the weighted presets' one)."""
    entries = gmm_bench.select_entries([*args.weighted, *args.single_chain])
    return [e for e in entries if not e.latent]


def gmm_part(args: argparse.Namespace) -> list[dict]:
    """Every entry on every instance at every N: the rows of ``gmm_bench.run`` with ``n``,
    also written to ``--csv`` as they come."""
    sink = gmm_bench.CSVRows(args.csv) if args.csv else None

    def on_row(row: dict) -> None:
        if sink is not None:
            sink(row)
        if not args.quiet:
            _progress(row)

    rows: list[dict] = []
    try:
        for n in args.particles:
            protocol = gmm_bench.Protocol(
                args.dims, args.dys, args.instances, n, args.slices, args.seed
            )
            rows += gmm_bench.run(gmm_entries(args), protocol, args.workers, on_row)
    finally:
        if sink is not None:
            sink.close()
    return rows


def _progress(row: dict) -> None:
    if row["solver"] != "floor":
        print(f"N={row['n']} " + gmm_bench.progress_line(row), file=sys.stderr, flush=True)


def _cell_mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) is not None and r[key] == r[key]]
    return statistics.fmean(values) if values else float("nan")


def gmm_tables(rows: list[dict], args: argparse.Namespace) -> str:
    """SW / floor per (cell, entry, N), coverage at the largest N, and the target checks."""
    scored = [r for r in rows if r["solver"] not in ("floor", gmm_bench.PRIOR_LABEL)]
    scored = [r for r in scored if r["bed"] == "pixel"]
    labels = [e.label for e in gmm_entries(args)]
    largest = max(args.particles)
    lines = [
        "| d | d_y | solver / preset | NFE / sample | "
        + " | ".join(f"N={n}" for n in args.particles)
        + " | "
        + " | ".join(f"{level:.0%} cov. (N={largest})" for level in COVERAGE_LEVELS)
        + " |",
        "|---:|---:|---|---:|" + "---:|" * (len(args.particles) + len(COVERAGE_LEVELS)),
    ]
    ratio: dict[tuple[int, int, str, int], float] = {}
    sw: dict[tuple[int, int, str, int], float] = {}
    for d in args.dims:
        for d_y in args.dys:
            for label in labels:
                mine = [r for r in scored if (r["d"], r["d_y"]) == (d, d_y)]
                mine = [r for r in mine if gmm_bench._label(r) == label]
                if not mine:
                    continue
                cells = []
                for n in args.particles:
                    at_n = [r for r in mine if r["n"] == n]
                    ratio[(d, d_y, label, n)] = _cell_mean(at_n, "ratio")
                    sw[(d, d_y, label, n)] = _cell_mean(at_n, "sw")
                    cells.append(f"{ratio[(d, d_y, label, n)]:.2f}")
                at_largest = [r for r in mine if r["n"] == largest]
                coverage = [
                    f"{100 * _cell_mean(at_largest, coverage_name(level)):.1f}"
                    for level in COVERAGE_LEVELS
                ]
                nfe = _cell_mean(at_largest, "nfe")
                lines.append(
                    f"| {d} | {d_y} | {label} | {nfe:.0f} | " + " | ".join(cells + coverage) + " |"
                )
    lines += ["", *target_lines(ratio, sw, rows, args)]
    return "\n".join(lines)


def target_lines(
    ratio: dict[tuple[int, int, str, int], float],
    sw: dict[tuple[int, int, str, int], float],
    rows: list[dict],
    args: argparse.Namespace,
) -> list[str]:
    """The targets, each with PASS/MISS and the numbers behind it (``ratio``: mean SW / floor,
    ``sw``: mean SW, per (d, d_y, entry, N))."""
    largest, out = max(args.particles), []
    single = [e.label for e in gmm_bench.select_entries(args.single_chain) if not e.latent]
    for entry in gmm_bench.select_entries(args.weighted):
        label = entry.label
        cells_falling = sum(
            all(
                sw[(d, k, label, a)] >= sw[(d, k, label, b)]
                for a, b in zip(args.particles, args.particles[1:], strict=False)
            )
            for d in args.dims
            for k in args.dys
        )
        total = len(args.dims) * len(args.dys)
        out.append(
            f"- {label}: mean SW falls with N in {cells_falling} of {total} cells: "
            f"{_verdict(cells_falling == total)}"
        )
        for d in args.dims:
            worst = max(ratio[(d, k, label, largest)] for k in args.dys)
            bound = TARGETS.get(d)
            if bound is not None:
                verdict = _verdict(worst <= bound)
                out.append(
                    f"- {label}: d = {d}, worst cell at N = {largest}: {worst:.2f}x the floor "
                    f"(target <= {bound:g}x): {verdict}"
                )
        wins = sum(
            all(
                ratio[(d, k, label, largest)] < ratio.get((d, k, s, largest), float("inf"))
                for s in single
            )
            for d in args.dims
            for k in args.dys
        )
        out.append(
            f"- {label}: better than every single-chain entry at N = {largest} in {wins} of "
            f"{total} cells (target >= 5 of 6): {_verdict(wins >= 5 * total / 6)}"
        )
        for level in COVERAGE_LEVELS:
            mine = [r for r in rows if gmm_bench._label(r) == label and r["n"] == largest]
            value = 100 * _cell_mean(mine, coverage_name(level))
            ok = abs(value - 100 * level) <= 5
            out.append(
                f"- {label}: {level:.0%} coverage at N = {largest}: {value:.1f} "
                f"(target within 5 points of {100 * level:.0f}): {_verdict(ok)}"
            )
    return out


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# -- part 2: digits phase retrieval ----------------------------------------------------------
def orientation_right(sample: torch.Tensor, truth: torch.Tensor) -> bool:
    """The sample is closer (PSNR) to the truth than to its 180-degree rotation."""
    rotated = sample.flip(-2, -1)
    return bool(metrics.psnr(sample, truth) > metrics.psnr(rotated, truth))


def digits_run(
    spec: solvers.SolverSpec, selection: str, n: int, y: torch.Tensor, operator, seed: int
) -> ensemble.EnsembleResult:
    settings = EnsembleSettings(particles=n, selection=selection, progress=False)
    return ensemble.run(
        EnsembleSpec(
            solver=spec,
            prior="digits",
            operator=OperatorSpec.of(operator),
            y=y,
            seed=seed,
            settings=settings,
        )
    )


def digits_part(args: argparse.Namespace) -> str:
    """Right-orientation share per N: TDS (heaviest particle) vs best-of-N DAPS."""
    from experiments.data import load_builtin_split

    images = load_builtin_split("digits", "test").images[: args.digits_images]
    operator = build_operator("phase_retrieval", images.shape[1:])
    ys = measurements(operator, images, args.seed)
    lines = [
        f"Digits phase retrieval, {images.shape[0]} test images: share of images whose "
        "returned sample has the right orientation (NFE per particle / chain in brackets)",
        "",
        "| N | TDS, heaviest particle | best-of-N DAPS by measurement loss |",
        "|---:|---:|---:|",
    ]
    for n in args.digits_particles:
        shares = []
        for spec, selection in ((DIGITS_TDS, "heaviest"), (DIGITS_DAPS, "best")):
            right, nfe = 0, 0
            for i, y in enumerate(ys):
                result = digits_run(spec, selection, n, y, operator, args.seed * 1_000_003 + i)
                right += orientation_right(result.samples[:1].float(), images[i : i + 1])
                nfe = result.nfe
            shares.append(f"{right}/{len(ys)} ({100 * right / len(ys):.0f}%) [{nfe}]")
            if not args.quiet:
                print(f"digits N={n} {spec.name}: {shares[-1]}", file=sys.stderr, flush=True)
        lines.append(f"| {n} | " + " | ".join(shares) + " |")
    return "\n".join(lines)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bench_parser("smc", __doc__)
    parser.add_argument(
        "--part", choices=("gmm", "digits", "all"), default="all", help="which part to run"
    )
    parser.add_argument("--dims", type=_ints, default=(8, 80), help="comma list (8,80)")
    parser.add_argument("--dys", type=_ints, default=(1, 2, 4), help="comma list (1,2,4)")
    parser.add_argument("--instances", type=int, default=20, help="instances per cell (20)")
    parser.add_argument(
        "--particles", type=_ints, default=PARTICLES, help="N values (64,256,1024,4096)"
    )
    parser.add_argument("--slices", type=int, default=100, help="SW directions (100)")
    parser.add_argument("--weighted", nargs="+", default=list(WEIGHTED), help="name:preset")
    parser.add_argument("--single-chain", nargs="+", default=list(SINGLE_CHAIN), help="name:preset")
    parser.add_argument("--digits-images", type=int, default=24, help="test images (24)")
    parser.add_argument(
        "--digits-particles", type=_ints, default=DIGITS_PARTICLES, help="N values (4,16,64)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed (0)")
    parser.add_argument("--workers", type=int, default=1, help="processes for GMM runs (1)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--csv", help="also write the GMM rows to this CSV file as they come")
    parser.add_argument(
        "--report-from",
        metavar="CSV",
        help="print the GMM tables of a --csv file instead of running (give the run's options)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    began = time.perf_counter()
    torch.set_num_threads(1)
    if args.part in ("gmm", "all"):
        rows = gmm_bench.read_rows(args.report_from) if args.report_from else gmm_part(args)
        print(
            f"GMM exact posterior (docs/gmm_benchmark.md): {args.instances} instance(s) per "
            f"cell, seed {args.seed}; SW / floor (mean of per-instance ratios) per N; the "
            "weighted entries' outputs are their particles resampled by weight\n"
        )
        print(gmm_tables(rows, args))
        print()
    if args.part in ("digits", "all") and not args.report_from:
        torch.set_num_threads(os.cpu_count() or 1)
        print(digits_part(args))
    print(f"\ntotal {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
