"""Ensemble benchmark: do repulsion or loss-potential steering beat N independent chains?

Run: ``python -m experiments.benchmarks.ensemble_gmm`` (``--help`` for options).

1. GMM benchmark (docs/gmm_benchmark.md, scored by experiments/gmm_protocol.py) with d_y = 1, on the
   first ``--instances`` instances whose exact posterior has at least two components of weight >= 5%
   (strongly multimodal). DAPS with its tuned preset ``gmm/pixel_hmc`` (annealing steps cut to
   ``--steps`` for a CPU run) runs ``--ensembles`` ensembles per instance and variant; each ensemble
   interacts only within itself. Variants: independent chains, which is what the default
   ``Repulsion()`` (weight 0) and ``Steering()`` (disabled) give; RBF repulsion on the particles'
   clean estimates (``features="pixels"``: for the GMM the vector itself) at several weights and
   noise windows; heuristic Feynman-Kac steering. Every variant runs the same particles, steps and
   seeds (equal NFE, common random numbers). Metrics: sliced Wasserstein-1 (SW) of the pooled
   particles to as many exact posterior draws; per ensemble, the mode coverage (posterior mass of
   the components that received at least one particle), the components of weight > 1% hit, and the
   total variation (TV) between the particles' shares per component and the posterior weights. A
   particle belongs to the nearest posterior component mean in the Mahalanobis metric of the
   components' shared covariance. Two tables: ``--particles`` (100) per ensemble, and
   ``--small-particles`` (8), where coverage is not saturated. The row "exact posterior draws" is
   what a perfect sampler scores on the same protocol.
2. Phase retrieval (``--images`` digits of the test split, shipped pixel prior "digits",
   sigma_y 0.05, oversampling 2): one ensemble of 4 independent DAPS chains per image. Share of
   images where a single chain and where the best-by-measurement-loss particle of the 4 land on
   the right orientation (closer to the ground truth than to its 180-degree rotation, which has
   exactly the same Fourier magnitudes), and their PSNR.

Target (issue): the default interaction settings must not be worse than independent chains.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

import ensemble
from ensemble import (
    EnsembleResult,
    EnsembleSettings,
    EnsembleSpec,
    OperatorSpec,
    Repulsion,
    Steering,
)
from experiments.cli_help import bench_parser
from experiments.gmm_protocol import ExactInstance
from experiments.mean_std import format_mean_std, sample_mean_std
from solvers import SolverSpec
from solvers.priors.gmm import GaussianMixturePosterior, GMMProblem, mcgdiff_problem

GMM_PRESET = "gmm/pixel_hmc"
SIGNIFICANT_WEIGHT = 0.01  # components above this posterior weight count as modes
MULTIMODAL_WEIGHT = 0.05  # an instance is used when 2+ components carry at least this weight
EXACT = "exact posterior draws"
INDEPENDENT = "independent chains (= default Repulsion(), Steering())"
PR_PRESET = "pixel_hmc/phase_retrieval"
# CPU-sized DAPS for 32x32 digits (the preset runs 200 steps of 62 HMC iterations); the
# shipped pixel priors stop at sigma = 20.
PR_OVERRIDES = {"annealing_steps": 50, "sigma_max": 20.0, "ode_steps": 3, "mcmc_steps": 20}
PR_PARTICLES = 4
PR_SIGMA_Y = 0.05


@dataclass(frozen=True)
class Variant:
    """One interaction setting of the ensemble (``Repulsion()`` / ``Steering()`` defaults: off)."""

    label: str
    repulsion: Repulsion = field(default_factory=Repulsion)
    steering: Steering = field(default_factory=Steering)


def main_variants() -> list[Variant]:
    """Variants at N = 100: a weight sweep (the push sums over particles, so it grows with N),
    an early-only window, and steering at the default and at a near-1 ESS threshold."""
    return [
        Variant(INDEPENDENT),
        Variant("repulsion w=0.01", Repulsion(weight=0.01)),
        Variant("repulsion w=0.1", Repulsion(weight=0.1)),
        Variant("repulsion w=1", Repulsion(weight=1.0)),
        Variant("repulsion w=1, sigma >= 1 only", Repulsion(weight=1.0, sigma_min=1.0)),
        Variant("steering ess 0.5 (default threshold)", steering=Steering(enabled=True)),
        Variant("steering ess 0.99", steering=Steering(enabled=True, ess_threshold=0.99)),
        Variant(
            "steering ess 0.99, temperature 3",
            steering=Steering(enabled=True, ess_threshold=0.99, temperature=3.0),
        ),
    ]


def small_variants() -> list[Variant]:
    """Variants at small N, where independent chains can miss modes."""
    return [
        Variant(INDEPENDENT),
        Variant("repulsion w=1", Repulsion(weight=1.0)),
        Variant("repulsion w=3", Repulsion(weight=3.0)),
        Variant("repulsion w=3, svgd", Repulsion(weight=3.0, svgd=True)),
        Variant(
            "steering ess 0.99, temperature 3",
            steering=Steering(enabled=True, ess_threshold=0.99, temperature=3.0),
        ),
    ]


# -- mode coverage -----------------------------------------------------------------------------
def assign_modes(samples: torch.Tensor, posterior: GaussianMixturePosterior) -> torch.Tensor:
    """Index of the nearest posterior component mean per sample, in the Mahalanobis metric of
    the components' shared covariance (weights play no part: a particle counts for the
    component it sits on, however light)."""
    whiten = torch.linalg.cholesky(torch.linalg.inv(posterior.covariance))
    u = samples.to(torch.float64) @ whiten
    return torch.cdist(u, posterior.means @ whiten).argmin(dim=1)


def mode_coverage(samples: torch.Tensor, posterior: GaussianMixturePosterior) -> dict[str, float]:
    """Coverage figures of one ensemble's particles (n, d).

    ``coverage``: posterior mass of the components hit by at least one particle;
    ``hit`` / ``modes``: components of weight > ``SIGNIFICANT_WEIGHT`` hit / present;
    ``tv``: total variation between the particles' share per component and the weights.
    """
    weights = posterior.weights
    counts = torch.bincount(assign_modes(samples, posterior), minlength=weights.numel())
    hit = counts > 0
    significant = weights > SIGNIFICANT_WEIGHT
    share = counts.to(torch.float64) / counts.sum()
    return {
        "coverage": float(weights[hit].sum()),
        "hit": float((hit & significant).sum()),
        "modes": float(significant.sum()),
        "tv": 0.5 * float((share - weights).abs().sum()),
    }


# -- GMM runs ----------------------------------------------------------------------------------
def multimodal_instances(d: int, count: int) -> list[int]:
    """The first ``count`` instance seeds (d_y = 1) with 2+ components of weight >= 5%."""
    chosen, seed = [], 0
    while len(chosen) < count:
        weights = mcgdiff_problem(d, 1, seed).posterior.weights
        if int((weights >= MULTIMODAL_WEIGHT).sum()) >= 2:
            chosen.append(seed)
        seed += 1
    return chosen


def run_ensembles(
    problem: GMMProblem, variant: Variant, particles: int, seeds: Sequence[int], steps: int
) -> list[EnsembleResult]:
    """One ensemble of ``particles`` DAPS particles per seed (local backend)."""
    spec = EnsembleSpec(
        solver=SolverSpec("daps", GMM_PRESET, {"annealing_steps": steps}),
        prior={"name": "gmm", "d": problem.prior.shape[0]},
        operator=OperatorSpec.of(problem.operator),
        y=problem.y,
        seed=seeds[0],
        settings=EnsembleSettings(
            particles=particles,
            progress=False,
            features="pixels",
            repulsion=variant.repulsion,
            steering=variant.steering,
        ),
    )
    return [ensemble.run(spec.replace(seed=s)) for s in seeds]


def score_variant(
    ensembles: Sequence[torch.Tensor], exact: ExactInstance, reference: torch.Tensor
) -> dict[str, float]:
    """SW of the pooled particles to ``reference``; coverage figures averaged over ensembles."""
    figures = [mode_coverage(e, exact.posterior) for e in ensembles]
    out = {key: statistics.fmean(f[key] for f in figures) for key in figures[0]}
    out["sw"] = exact.sw(torch.cat(list(ensembles)), reference)
    return out


def gmm_benchmark(
    args: argparse.Namespace, variants: Sequence[Variant], particles: int, ensembles: int
) -> dict[str, list[dict[str, float]]]:
    """Per row label (exact draws, then the variants), the scores of every instance."""
    rows: dict[str, list[dict[str, float]]] = {EXACT: [], **{v.label: [] for v in variants}}
    total = particles * ensembles
    for instance in multimodal_instances(args.d, args.instances):
        exact = ExactInstance.mcgdiff(args.d, 1, instance, seed=args.seed)
        problem = exact.problem
        top = exact.posterior.weights.sort(descending=True).values[:5].tolist()
        print(f"instance {instance}: largest posterior weights {[round(w, 3) for w in top]}")
        reference = exact.reference(total)
        score = score_variant(exact.exact(total).split(particles), exact, reference)
        rows[EXACT].append({**score, "moves": 0.0, "seconds": 0.0})
        seeds = [args.seed * 1_000_003 + instance * 1000 + r for r in range(ensembles)]
        for variant in variants:
            began = time.perf_counter()
            results = run_ensembles(problem, variant, particles, seeds, args.steps)
            score = score_variant([r.all_samples for r in results], exact, reference)
            score["moves"] = statistics.fmean(sum(r.traces["moves"]) for r in results)
            score["seconds"] = time.perf_counter() - began
            rows[variant.label].append(score)
            print(
                f"  {variant.label}: SW {score['sw']:.3f}, coverage {score['coverage']:.3f}, "
                f"TV {score['tv']:.3f}, {score['seconds']:.0f} s",
                flush=True,
            )
    return rows


def gmm_table(rows: dict[str, list[dict[str, float]]]) -> str:
    """Markdown table of means over instances; the SW change is paired with independent chains
    (wins: instances where the variant's SW is lower)."""
    baseline = rows[INDEPENDENT]
    lines = [
        "| variant | SW (mean ± std) | SW - independent (wins) | coverage | modes hit (w > 1%) "
        "| TV of mode shares | resampled slots / run | s / instance |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, scores in rows.items():
        sw = [s["sw"] for s in scores]
        diff = [s["sw"] - b["sw"] for s, b in zip(scores, baseline, strict=True)]
        versus = f"{statistics.fmean(diff):+.3f} ({sum(x < 0 for x in diff)}/{len(diff)})"
        hit = statistics.fmean(s["hit"] for s in scores)
        modes = statistics.fmean(s["modes"] for s in scores)
        lines.append(
            f"| {label} | {format_mean_std(*sample_mean_std(sw))} | "
            f"{'-' if label in (EXACT, INDEPENDENT) else versus} | "
            f"{_mean(scores, 'coverage'):.3f} | {hit:.2f} / {modes:.2f} | "
            f"{_mean(scores, 'tv'):.3f} | {_mean(scores, 'moves'):.0f} | "
            f"{_mean(scores, 'seconds'):.0f} |"
        )
    return "\n".join(lines)


def _mean(scores: Sequence[dict[str, float]], key: str) -> float:
    return statistics.fmean(s[key] for s in scores)


# -- phase retrieval ---------------------------------------------------------------------------
def right_orientation(samples: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per sample: closer to the ground truth (1, C, H, W) than to its 180-degree rotation."""
    rotated = torch.rot90(truth, 2, dims=(-2, -1))
    to_truth = (samples - truth).flatten(1).norm(dim=1)
    to_rotated = (samples - rotated).flatten(1).norm(dim=1)
    return to_truth < to_rotated


def phase_retrieval_benchmark(args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    """Per method, one row per test image: right orientation (0/1 or a share), PSNR, loss.

    One ensemble of ``PR_PARTICLES`` particles without interaction per image: each particle is
    a single DAPS chain (``ensemble.run`` then equals ``solver.sample``). "single chain" is
    particle 0; "single chain, mean of 4" averages the 4 chains (the same expectation, less
    noise); "best of 4" is the particle of lowest measurement loss (``selection="best"``) at 4x
    the NFE; "oracle" the particle closest to the ground truth (not available in practice).
    """
    import operators
    from experiments.data import load_builtin_split
    from experiments.metrics import psnr

    images = load_builtin_split("digits", "test").images[: args.images]
    operator = operators.build(
        "phase_retrieval", shape=(1, 32, 32), sigma=PR_SIGMA_Y, oversample=2.0
    )
    labels = ("single chain", "single chain, mean of 4", "best of 4 by loss", "oracle of 4")
    rows: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    for i in range(images.shape[0]):
        truth = images[i : i + 1]
        seed = args.seed * 1_000_003 + i
        y = operator.measure(truth, torch.Generator().manual_seed(seed))
        spec = EnsembleSpec(
            solver=SolverSpec("daps", PR_PRESET, PR_OVERRIDES),
            prior="digits",
            operator=OperatorSpec.of(operator),
            y=y,
            seed=seed,
            settings=EnsembleSettings(
                particles=PR_PARTICLES, progress=False, selection="best", select_k=1
            ),
        )
        result = ensemble.run(spec)
        samples = result.all_samples.to(truth)
        figures = {
            "right": right_orientation(samples, truth).double(),
            "psnr": psnr(samples.clamp(-1, 1), truth.expand_as(samples)).double(),
            "loss": result.loss.double(),
        }
        picks = {"single chain": 0, "best of 4 by loss": result.selected[0]}
        picks["oracle of 4"] = int(figures["psnr"].argmax())
        for label in labels:
            pick = picks.get(label)
            row = {k: float(v.mean() if pick is None else v[pick]) for k, v in figures.items()}
            row["nfe"] = float(result.nfe * (1 if label.startswith("single") else PR_PARTICLES))
            row["seconds"] = result.seconds
            rows[label].append(row)
        print(
            f"  image {i}: right orientation {figures['right'].int().tolist()}, losses "
            f"{[round(v, 2) for v in result.loss.tolist()]}, ground truth "
            f"{float(operator.loss(truth, y)):.2f}, {result.seconds:.0f} s",
            flush=True,
        )
    return rows


def phase_retrieval_table(rows: dict[str, list[dict[str, float]]]) -> str:
    """Markdown table: share of images on the right orientation, PSNR, loss and NFE."""
    lines = [
        "| method | right orientation | PSNR dB (mean ± std) | measurement loss | NFE / image |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, scores in rows.items():
        quality = [s["psnr"] for s in scores]
        lines.append(
            f"| {label} | {_mean(scores, 'right'):.2f} | "
            f"{format_mean_std(*sample_mean_std(quality), 2)} | {_mean(scores, 'loss'):.2f} | "
            f"{_mean(scores, 'nfe'):.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("ensemble_gmm", __doc__)
    parser.add_argument(
        "--instances", type=int, default=10, help="multimodal GMM instances (0: skip the GMM part)"
    )
    parser.add_argument("--particles", type=int, default=100, help="particles per ensemble")
    parser.add_argument("--ensembles", type=int, default=5, help="ensembles per instance")
    parser.add_argument(
        "--small-particles", type=int, default=8, help="particles of the second table (0: skip)"
    )
    parser.add_argument("--steps", type=int, default=200, help="DAPS annealing steps (GMM)")
    parser.add_argument("--d", type=int, default=8, help="GMM dimension (even)")
    parser.add_argument("--images", type=int, default=24, help="phase-retrieval test images")
    parser.add_argument(
        "--skip-phase-retrieval", action="store_true", help="skip the digits phase-retrieval part"
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed of every ensemble")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    began = time.perf_counter()
    sizes = [(args.particles, main_variants())] if args.instances > 0 else []
    if args.instances > 0 and args.small_particles > 0:
        sizes.append((args.small_particles, small_variants()))
    tables = []
    for particles, variants in sizes:
        title = (
            f"GMM d = {args.d}, d_y = 1, {args.instances} multimodal instances, "
            f"{args.ensembles} ensembles x {particles} particles, DAPS {GMM_PRESET} with "
            f"{args.steps} annealing steps"
        )
        print(f"\n## {title}\n", flush=True)
        tables.append((title, gmm_table(gmm_benchmark(args, variants, particles, args.ensembles))))
    if not args.skip_phase_retrieval:
        title = f"Phase retrieval, {args.images} test digits, DAPS {PR_PRESET} {PR_OVERRIDES}"
        print(f"\n## {title}\n", flush=True)
        tables.append((title, phase_retrieval_table(phase_retrieval_benchmark(args))))
    for title, table in tables:
        print(f"\n### {title}\n\n{table}")
    print(f"\ntotal {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
