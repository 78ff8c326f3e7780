"""Exact-posterior benchmark: every solver's tuned ``gmm`` preset on the MCGdiff Gaussian mixture.

Run: ``python -m experiments.benchmarks.gmm`` (or ``dipswarm bench gmm``). Protocol of
docs/gmm_benchmark.md, scored by experiments/gmm_protocol.py (MCGdiff, Cardoso et al., ICLR
2024): for d in {8, 80}, d_y in {1, 2, 4} and 20 instances per cell, 2,000 solver samples
against 2,000 exact posterior samples, sliced Wasserstein-1 over 100 random directions. The
perfect-sampler floor (two independent exact sample sets of the same size, same directions) is
measured in the same run, so each solver is judged by SW / floor. Latent solvers run on the
``LinearDecoderPrior`` variant of each instance (same A, sigma_y and prior draw, seen through an
invertible affine decoder); all SW values are in image space (latent samples are decoded, the
latent posterior is pushed forward). Every random draw comes from a generator seeded from
``--seed`` and the instance index, so a run is reproducible whatever ``--workers`` is.
"""

from __future__ import annotations

import csv
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

import torch

import solvers
from experiments.cli_help import bench_parser
from experiments.gmm_protocol import ExactInstance, exact_coverage
from experiments.mean_std import format_mean_std, sample_mean_std
from experiments.metrics import COVERAGE_LEVELS, coverage_name

SCHEDULE_NOTE = (
    "Schedules: the usual increasing ones, not MCGdiff's decreasing betas = "
    "linspace(0.02, 1e-4, 999) quirk. DPS, Latent-DPS, ReSample and C-DPS use the DDPM betas "
    "linspace(1e-4, 0.02, 1000) (increasing), read as VE/EDM levels sigma_t = "
    "sqrt((1 - abar_t) / abar_t); DAPS and DAPS-Opt anneal an EDM poly-7 sigma grid "
    "(10 -> 0.1 in the gmm presets); noise_langevin's generator is an EDM Heun ODE "
    "(sigma 80 -> 0.002)."
)
PRIOR_LABEL = "prior (no data)"
GMM_TASK = "matrix"  # the operator of the MCGdiff instances: presets for it are benchmarked
# Problem instance i of a run seeded s is MCGdiff instance INSTANCE_STRIDE * s + i (so --seed 0
# gives instances 0, 1, ..., the numbering the solver tests use).
INSTANCE_STRIDE = 1000


@dataclass(frozen=True)
class Entry:
    """One benchmarked configuration: a solver ``spec`` on one test bed.

    ``latent`` picks the ``LinearDecoderPrior`` variant; the spec's overrides are extra config
    fields on top of the preset (empty for the command line; small runs such as tests shorten
    solvers).
    """

    spec: solvers.SolverSpec
    latent: bool

    @property
    def label(self) -> str:
        return f"{self.spec.name} {self.spec.preset}"

    @property
    def bed(self) -> str:
        return "latent" if self.latent else "pixel"

    def settings(self) -> dict[str, Any]:
        """The preset's field overrides, then the spec's: what differs from the defaults."""
        assert self.spec.preset is not None
        preset = solvers.presets(self.spec.name)[self.spec.preset]
        return {**preset.overrides, **self.spec.overrides}


# -- which solvers, presets and beds -----------------------------------------------------------
def gmm_presets(name: str) -> list[str]:
    """The presets of solver ``name`` tuned for this benchmark: those whose task is the GMM's
    ``matrix`` operator."""
    return sorted(k for k, p in solvers.presets(name).items() if p.task == GMM_TASK)


def beds(name: str, preset: str) -> tuple[bool, ...]:
    """The test beds (latent flags) a solver preset runs on: the solver's restriction, else the
    preset's backbone, else both."""
    return tuple(backbone == "latent" for backbone in solvers.backbones(name, preset))


def select_entries(specs: Iterable[str] | None) -> list[Entry]:
    """Entries for ``specs`` ("name" = all its gmm presets, or "name:preset"); None = every
    registered solver's gmm presets."""
    pairs: list[tuple[str, str]] = []
    for spec in specs if specs is not None else solvers.available():
        name, _, preset = spec.partition(":")
        known = gmm_presets(name)
        if preset and preset not in known:
            raise SystemExit(f"{name} has no gmm preset {preset!r}; gmm presets: {known}")
        if not known and specs is not None:
            raise SystemExit(
                f"{name} has no gmm preset; its presets: {sorted(solvers.presets(name))}"
            )
        pairs += [(name, preset)] if preset else [(name, p) for p in known]
    return [
        Entry(solvers.SolverSpec(name, preset), latent)
        for name, preset in pairs
        for latent in beds(name, preset)
    ]


# -- one instance ------------------------------------------------------------------------------
def instance(d: int, d_y: int, seed: int, index: int, latent: bool, slices: int) -> ExactInstance:
    """Instance ``index`` of (d, d_y) in a run seeded ``seed`` (MCGdiff instance
    ``INSTANCE_STRIDE * seed + index``; random streams keyed by ``seed`` and ``index``)."""
    number = INSTANCE_STRIDE * seed + index
    return ExactInstance.mcgdiff(d, d_y, number, latent=latent, seed=seed, key=index, slices=slices)


def _row(solver: str, preset: str, bed: str, d: int, d_y: int, index: int, **values: Any) -> dict:
    return {
        "solver": solver,
        "preset": preset,
        "bed": bed,
        "d": d,
        "d_y": d_y,
        "instance": index,
        **values,
    }


def reference_rows(d: int, d_y: int, index: int, n: int, slices: int, seed: int) -> list[dict]:
    """The floor and the prior-samples row of both beds of one instance.

    The prior row compares n prior draws (decoded on the latent bed) with the exact posterior:
    what a sampler that ignores y scores.
    """
    rows = []
    for latent in (False, True):
        exact = instance(d, d_y, seed, index, latent, slices)
        bed = "latent" if latent else "pixel"
        reference = exact.reference(n)
        rows.append(_row("floor", "", bed, d, d_y, index, sw=exact.floor(n, reference)))
        start = time.perf_counter()
        draws = exact.prior_draws(n)
        seconds = time.perf_counter() - start
        sw = exact.sw(draws, reference)
        rows.append(_row(PRIOR_LABEL, "", bed, d, d_y, index, sw=sw, nfe=0, seconds=seconds))
    return rows


def solver_row(entry: Entry, d: int, d_y: int, index: int, n: int, slices: int, seed: int) -> dict:
    """Run ``entry`` on one instance: SW to the exact posterior, NFE, wall time, stopped count,
    and the coverage of the exact posterior draws by the samples' 50% / 90% central intervals
    (``gmm_protocol.exact_coverage``).

    SW uses the particles that finished ("ok"); stopped ones are counted, not compared.
    """
    torch.set_num_threads(1)
    exact = instance(d, d_y, seed, index, entry.latent, slices)
    p = exact.problem
    solver = entry.spec.build()
    if solver.weighted:  # n particles with resampling, resampled by weight to n outputs
        result = weighted_run(entry.spec, exact, n)
    else:
        result = solver.sample(p.prior, p.operator, p.y, n=n, seed=exact.solver_seed)
    ok = torch.tensor([s == "ok" for s in result.status]) & torch.isfinite(
        result.samples.flatten(1)
    ).all(1)
    reference = exact.reference(n)
    sw = exact.sw(result.samples[ok], reference) if bool(ok.any()) else math.nan
    coverage = (
        exact_coverage(result.samples[ok], None, reference)
        if int(ok.sum()) >= 2
        else {coverage_name(level): math.nan for level in COVERAGE_LEVELS}
    )
    return _row(
        entry.spec.name,
        entry.spec.preset,
        entry.bed,
        d,
        d_y,
        index,
        sw=sw,
        nfe=result.nfe,
        seconds=result.seconds,
        stopped=int((~ok).sum()),
        **coverage,
    )


def weighted_run(spec: solvers.SolverSpec, exact: ExactInstance, n: int) -> Any:
    """A weighted solver's n particles on one instance as an in-process ensemble (ESS-triggered
    resampling, default ``smc``), resampled by their final weights to n equally weighted
    outputs (``selection: weighted``); the result has ``samples``, ``status``, ``nfe``,
    ``seconds`` like ``Solver.sample``'s (nfe per particle)."""
    import ensemble
    from ensemble import EnsembleSettings, EnsembleSpec, OperatorSpec

    p = exact.problem
    prior = {"name": "gmm", "d": p.prior.shape[0], "latent": p.prior.is_latent}
    settings = EnsembleSettings(particles=n, selection="weighted", progress=False)
    run_spec = EnsembleSpec(
        solver=spec,
        prior=prior,
        operator=OperatorSpec.of(p.operator),
        y=p.y,
        seed=exact.solver_seed,
        settings=settings,
    )
    result = ensemble.run(run_spec)
    status = [result.status[i] for i in result.selected]
    return WeightedOutputs(result.samples, status, result.nfe, result.seconds, result.log_weights)


@dataclass(frozen=True)
class WeightedOutputs:
    """A weighted ensemble's resampled outputs, shaped like ``solvers.base.Result``."""

    samples: torch.Tensor
    status: list[str]
    nfe: int
    seconds: float
    log_weights: torch.Tensor | None


# -- the whole grid ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Protocol:
    """The grid and sizes of one benchmark run."""

    dims: tuple[int, ...] = (8, 80)
    dys: tuple[int, ...] = (1, 2, 4)
    instances: int = 20
    samples: int = 2000
    slices: int = 100
    seed: int = 0

    def cells(self) -> list[tuple[int, int, int]]:
        """(d, d_y, instance index) triples, in table order."""
        return [(d, k, i) for d in self.dims for k in self.dys for i in range(self.instances)]


def run(
    entries: list[Entry],
    protocol: Protocol,
    workers: int = 1,
    on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Per-instance rows: floors, prior rows, then every entry on every instance.

    Scored rows carry ``n``, ``floor`` (the instance's floor on the row's bed) and ``ratio``
    (sw / floor). ``on_row`` sees each row as soon as it is done (solver rows in completion
    order). ``workers`` > 1 spreads solver runs over processes (one thread each); the rows do
    not depend on it.
    """
    n, slices, seed = protocol.samples, protocol.slices, protocol.seed
    rows = [r for d, k, i in protocol.cells() for r in reference_rows(d, k, i, n, slices, seed)]
    floor_of = {_key(r): r["sw"] for r in rows if r["solver"] == "floor"}
    jobs = [(e, d, k, i, n, slices, seed) for e in entries for d, k, i in protocol.cells()]
    done: list[dict] = []

    def finish(row: dict) -> None:
        if row["solver"] != "floor":
            row.update(floor=floor_of[_key(row)], ratio=row["sw"] / floor_of[_key(row)], n=n)
        if on_row is not None:
            on_row(row)

    for row in rows:
        finish(row)
    if workers <= 1:
        for job in jobs:
            done.append(solver_row(*job))
            finish(done[-1])
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(solver_row, *job) for job in jobs]
            for future in as_completed(futures):
                done.append(future.result())
                finish(done[-1])
    return rows + _in_job_order(done, jobs)


def _key(row: dict) -> tuple[str, int, int, int]:
    return row["bed"], row["d"], row["d_y"], row["instance"]


def _label(row: dict) -> str:
    return f"{row['solver']} {row['preset']}".strip()


def _in_job_order(done: list[dict], jobs: list[tuple]) -> list[dict]:
    key = {(e.label, e.bed, d, k, i): j for j, (e, d, k, i, *_) in enumerate(jobs)}
    return sorted(done, key=lambda r: key[(_label(r), r["bed"], r["d"], r["d_y"], r["instance"])])


def progress_line(row: dict) -> str:
    """One line per finished row, for watching a long run."""
    text = f"{_label(row)} ({row['bed']}) d={row['d']} d_y={row['d_y']} i={row['instance']}"
    return f"{text}: SW {row['sw']:.3f}, floor {row['floor']:.3f}, {row['seconds']:.1f} s"


# -- the report --------------------------------------------------------------------------------
def _finite(values: Iterable[float]) -> list[float]:
    """The finite values: an instance whose particles all stopped has SW = nan."""
    return [v for v in values if math.isfinite(v)]


def _mean(values: Iterable[float]) -> float:
    finite = _finite(values)
    return statistics.fmean(finite) if finite else math.nan


def _mean_std(values: list[float]) -> str:
    """Mean ± std over instances (std 0 for one instance), and the instances left out."""
    finite = _finite(values)
    mean, std = sample_mean_std(finite)
    stopped = len(values) - len(finite)
    failed = f" ({stopped} inst. all stopped)" if stopped else ""
    return format_mean_std(mean, 0.0 if len(finite) == 1 else std) + failed


def cells(rows: list[dict]) -> dict[tuple[str, str, int, int], list[dict]]:
    """Rows other than floors grouped by (solver label, bed, d, d_y), in first-seen order."""
    groups: dict[tuple[str, str, int, int], list[dict]] = {}
    for r in rows:
        if r["solver"] != "floor":
            groups.setdefault((_label(r), r["bed"], r["d"], r["d_y"]), []).append(r)
    return groups


def table(rows: list[dict]) -> str:
    """The Markdown table: one line per (solver, bed, d, d_y), statistics over instances."""
    lines = [
        "| solver / preset | bed | d | d_y | SW (mean ± std) | floor (mean ± std) | SW / floor "
        "| NFE / sample | ms / sample | stopped | " + " | ".join(_COVERAGE_HEADERS) + " |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(_COVERAGE_HEADERS),
    ]
    for (label, bed, d, d_y), group in cells(rows).items():
        ms = 1000 * statistics.fmean(r["seconds"] / r["n"] for r in group)
        lines.append(
            f"| {label} | {bed} | {d} | {d_y} | {_mean_std([r['sw'] for r in group])} | "
            f"{_mean_std([r['floor'] for r in group])} | "
            f"{_mean(r['ratio'] for r in group):.1f} | "
            f"{statistics.fmean(r['nfe'] for r in group):.0f} | {ms:.3f} | "
            f"{sum(r.get('stopped', 0) for r in group)} | "
            + " | ".join(_coverage_cell(group, level) for level in COVERAGE_LEVELS)
            + " |"
        )
    return "\n".join(lines)


_COVERAGE_HEADERS = [f"{level:.0%} coverage" for level in COVERAGE_LEVELS]


def _coverage_cell(group: list[dict], level: float) -> str:
    """Mean coverage (in %) of the exact posterior draws at one interval level."""
    values = _finite(r.get(coverage_name(level), math.nan) for r in group)
    return f"{100 * statistics.fmean(values):.1f}" if values else "n/a"


def summary(rows: list[dict]) -> dict[tuple[str, str], float]:
    """Mean over cells of the cell-mean SW / floor, per (solver label, bed); instances whose
    particles all stopped (SW = nan) are left out of the means and counted in the table."""
    per_cell: dict[tuple[str, str], list[float]] = {}
    for (label, bed, _, _), group in cells(rows).items():
        per_cell.setdefault((label, bed), []).append(_mean(r["ratio"] for r in group))
    return {key: _mean(values) for key, values in per_cell.items()}


def report(rows: list[dict], entries: list[Entry], protocol: Protocol, workers: int) -> str:
    """The printed report: protocol, schedules, table, summary lines and preset settings."""
    p = protocol
    header = (
        f"MCGdiff Gaussian-mixture benchmark, exact posterior (docs/gmm_benchmark.md): d in "
        f"{list(p.dims)}, d_y in {list(p.dys)}, {p.instances} instance(s) per cell (MCGdiff "
        f"instances {INSTANCE_STRIDE * p.seed}..{INSTANCE_STRIDE * p.seed + p.instances - 1}), "
        f"{p.samples} solver samples vs {p.samples} exact posterior samples, sliced "
        f"Wasserstein-1 over {p.slices} directions, seed {p.seed}; floor = SW between two "
        f"independent exact sample sets of that size; SW / floor is the mean of per-instance "
        f"ratios; NFE = denoiser calls per particle; ms = solver wall time per sample; "
        f"coverage = share of exact posterior draws (and coordinates) inside the samples' "
        f"central intervals (nominal: the level) "
        f"(float64, torch {torch.__version__}, 1 thread per run, {workers} worker(s))."
    )
    lines = [header, "", SCHEDULE_NOTE, "", table(rows), ""]
    lines.append("Summary (mean SW / floor over cells):")
    for (label, bed), ratio in summary(rows).items():
        lines.append(f"- {label} ({bed}): {ratio:.1f}")
    lines += ["", "Preset settings (overrides of the solver defaults):"]
    for label, settings in {e.label: e.settings() for e in entries}.items():
        lines.append(f"- {label}: {settings}")
    skipped = [name for name in solvers.available() if not gmm_presets(name)]
    if skipped:
        lines.append(f"Not run (no gmm preset): {', '.join(skipped)}")
    return "\n".join(lines)


class CSVRows:
    """Writes per-instance rows (floors included) to a CSV file as they come, flushed each."""

    COLUMNS = ("solver", "preset", "bed", "d", "d_y", "instance", "sw", "floor", "ratio")
    COLUMNS += ("nfe", "seconds", "stopped", "n", *map(coverage_name, COVERAGE_LEVELS))

    def __init__(self, path: str) -> None:
        self.file = open(path, "w", newline="")  # noqa: SIM115 (closed by close())
        self.writer = csv.DictWriter(self.file, self.COLUMNS, restval="")
        self.writer.writeheader()

    def __call__(self, row: dict) -> None:
        self.writer.writerow(row)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def read_rows(path: str) -> list[dict]:
    """The rows of a ``--csv`` file (a finished or interrupted run), typed as ``run`` makes
    them and sorted into table order (solver label, bed, d, d_y, instance)."""
    integer = ("d", "d_y", "instance", "nfe", "stopped", "n")
    real = ("sw", "floor", "ratio", "seconds", *map(coverage_name, COVERAGE_LEVELS))
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            # an empty field was not recorded for that row (the preset is text, kept as is)
            row: dict[str, Any] = {k: v for k, v in raw.items() if v != "" or k == "preset"}
            row.update({k: int(raw[k]) for k in integer if raw.get(k)})
            row.update({k: float(raw[k]) for k in real if raw.get(k)})
            rows.append(row)
    return sorted(rows, key=lambda r: (_label(r), r["bed"], r["d"], r["d_y"], r["instance"]))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("gmm", __doc__)
    parser.add_argument("--dims", type=_ints, default=(8, 80), help="comma list (8,80)")
    parser.add_argument("--dys", type=_ints, default=(1, 2, 4), help="comma list (1,2,4)")
    parser.add_argument("--instances", type=int, default=20, help="instances per cell")
    parser.add_argument("--samples", type=int, default=2000, help="solver and exact samples")
    parser.add_argument("--slices", type=int, default=100, help="SW directions")
    parser.add_argument("--solvers", nargs="+", help="names or name:preset (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the solver runs")
    parser.add_argument("--workers", type=int, default=1, help="processes for solver runs")
    parser.add_argument("--csv", help="also write per-instance rows to this CSV file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--report-from",
        metavar="CSV",
        help="print the report of a --csv file instead of running (give the run's options)",
    )
    args = parser.parse_args(argv)
    if args.seed < 0 or not 0 < args.instances <= INSTANCE_STRIDE:
        parser.error(f"need --seed >= 0 and 1 <= --instances <= {INSTANCE_STRIDE}")
    torch.set_num_threads(1)
    protocol = Protocol(args.dims, args.dys, args.instances, args.samples, args.slices, args.seed)
    entries = select_entries(args.solvers)
    if args.report_from:
        print(report(read_rows(args.report_from), entries, protocol, args.workers))
        return
    sink = CSVRows(args.csv) if args.csv else None

    def on_row(row: dict) -> None:
        if sink is not None:
            sink(row)
        if not args.quiet and row["solver"] != "floor":
            print(progress_line(row), file=sys.stderr, flush=True)

    start = time.perf_counter()
    try:
        rows = run(entries, protocol, args.workers, on_row)
    finally:
        if sink is not None:
            sink.close()
    print(report(rows, entries, protocol, args.workers))
    print(f"\nTotal wall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
