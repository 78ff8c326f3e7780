"""Cluster scaling: ``dipswarm run`` on 1 and 2 CPU workers of this machine, and the job pool's
scheduling on a simulated multi-node GPU cluster (docs/benchmarks.md, ``cluster_scaling``).

1. Real, on this machine: the same ``dipswarm run`` (shipped ``digits`` prior, 4x
   super-resolution, 24 test images, DAPS pixel HMC at the reduced steps of
   ``experiments/configs/demo.yaml``, 4 images per job -> 6 jobs, tracking and LPIPS off) as
   the in-process loop (``execution.max_concurrent_jobs = 1``, one torch thread), and through
   ``ensemble.JobPool`` (``max_concurrent_jobs = "auto"``, ``cpus_per_job = 1``) on a local Ray
   instance of 1 and of 2 CPUs. Each configuration runs in a fresh process, after a one-image
   warm-up run there; wall time gives images per second, and the CPU time of the process tree
   (driver, Ray and its workers, sampled every 0.2 s) says how much work it took. The judged
   ratio is pool with 2 workers over pool with 1 worker (the same code path, one more worker);
   results.csv must agree across the three (bit-identical per-image values at the same
   ``images_per_batch``, checked to ``TOLERANCE`` relative).
2. Simulated cluster: a local multi-node Ray cluster (``ray.cluster_utils.Cluster``: a head with
   no resources plus N worker nodes of 1 CPU and 1 GPU each) runs a set of jobs through
   ``JobPool(gpus_per_job=1)``, one job per node at a time. A job is DAPS on a batch of MCGdiff
   Gaussian-mixture problems (d = 8) whose prior is ``SimulatedLatencyMixture``
   (``{"name": "gmm", "d": 8, "latency": [a, b]}``): exact mixture values, but each network call
   sleeps a + b x rows, the latency model of a GPU-bound UNet call, so the figure measures
   scheduling rather than this CPU. ``UNET_LATENCY`` (a, b) was measured on an NVIDIA H200
   (torch 2.11, float32, random weights, median of 15 calls after 3 warm-ups, least squares over
   1-32 rows) for the guided-diffusion FFHQ 256 UNet of DPS (Chung et al. 2023) and DAPS (Zhang
   et al. 2025) (``solvers.priors.guided_diffusion.ffhq_256``), forward only as in DAPS's ODE
   calls: 18.2 ms at 1 row, 24.5 at 4, 63.5 at 16, 121.6 at 32 (forward and backward to the
   input, as DPS needs: 43.7 ms at 1 row, 188 ms at 16). ``--fit-unet`` repeats that
   measurement on this machine's device. The benchmark runs with the latency times
   ``--time-scale`` (0.5) and jobs of ``--annealing-steps`` (10) x 5 ODE calls instead of
   DAPS-1K's 1000, so that it takes minutes. Per node count: jobs per second, scheduling
   efficiency = ideal / (nodes x wall), ideal = the sum over jobs of calls x (a + b x rows),
   and driver CPU time per job (``JobPool.counts().driver_seconds`` / jobs). Pool start-up
   (actors, prior load) is left out of the timed phase: warm-up jobs run first until every
   node has run one. Then one worker node is removed mid-run (``Cluster.remove_node``) at
   ``--kill-nodes`` nodes: the experiment must finish with the same values.

Run: ``python -m experiments.benchmarks.cluster_scaling`` (or ``dipswarm bench cluster_scaling``).
Targets (issue 15): 2 workers >= 1.7x the images/s of 1; efficiency >= 0.85 at 8 nodes; driver
time under 5 ms per job; identical values after a removed node.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from experiments.benchmarks.image_batches import (
    COMPARED,
    TARGET_METHOD,
    TASK,
    TOLERANCE,
    machine,
    max_difference,
    methods,
    read_results,
)
from experiments.cli_help import bench_parser

MODULE = "experiments.benchmarks.cluster_scaling"  # run as a fresh process per configuration
# the FFHQ 256 guided-diffusion UNet's forward call on an H200 (module docstring): a + b x rows
UNET_LATENCY = (0.0136, 0.00334)
TARGET_SPEEDUP = 1.7  # images/s of the pool with 2 workers over 1
TARGET_EFFICIENCY = 0.85  # at the largest node count (8)
TARGET_DRIVER_MS = 5.0  # driver CPU per job
# a removed node's death is noticed within about a second (Ray's default is tens of seconds)
FAST_FAILURE = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 200}


# -- part 1: dipswarm run on this machine ------------------------------------------------------
@dataclass(frozen=True)
class RealConfig:
    """One real configuration: ``workers`` CPU workers, through the pool or in-process."""

    label: str
    workers: int
    pooled: bool


REAL_CONFIGS = (
    RealConfig("in-process loop", 1, False),
    RealConfig("pool, 1 worker", 1, True),
    RealConfig("pool, 2 workers", 2, True),
)


@dataclass
class RealRow:
    """One real run: wall and process-tree CPU seconds of ``run_experiment``, and the wall
    seconds of the one-image warm-up run before it (for the pool: starting its actors and
    loading the prior there, which every ``dipswarm run`` through the pool pays once)."""

    label: str
    workers: int
    pooled: bool
    images: int
    jobs: int
    seconds: float
    cpu_seconds: float
    warmup_seconds: float
    output: str

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds


def real_experiment(
    images: int, images_per_batch: int, output: str, annealing_steps: int = 25
) -> dict[str, Any]:
    """The config mapping of the real part: DAPS (the demo's steps; ``annealing_steps`` 25 as
    in the demo, more for a longer run), one task, tracking and LPIPS off."""
    method = methods(dps_steps=1)[TARGET_METHOD]
    method = {**method, "overrides": {**method["overrides"], "annealing_steps": annealing_steps}}
    return {
        "name": "cluster_scaling",
        "prior": "digits",
        "data": {"dataset": "digits", "split": "test", "images": images},
        "tasks": [TASK],
        "methods": [method],
        "ensemble": {"particles": 1, "backend": "local", "selection": "best"},
        "execution": {"images_per_batch": images_per_batch},
        "metrics": {"lpips": False},
        "tracking": {"enabled": False},
        "output": output,
        "seed": 0,
    }


class TreeCPU:
    """CPU seconds of this process and its descendants (Ray's processes and workers when this
    process started Ray) while the ``with`` block runs: a thread samples every ``interval`` s
    and keeps each process's last reading, so processes that end inside the block count up to
    their last sample."""

    def __init__(self, interval: float = 0.2) -> None:
        import psutil  # a dependency of accelerate, which the package requires

        self._psutil = psutil
        self.interval = interval
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _read(self) -> dict[int, float]:
        me = self._psutil.Process()
        out = {}
        for process in [me, *me.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except self._psutil.Error:  # ended between listing and reading
                continue
            out[process.pid] = times.user + times.system
        return out

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._last.update(self._read())

    def __enter__(self) -> TreeCPU:
        self._start = self._read()
        self._last = dict(self._start)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._last.update(self._read())

    @property
    def seconds(self) -> float:
        return sum(v - self._start.get(pid, 0.0) for pid, v in self._last.items())


def measure_real(raw: dict[str, Any], config: RealConfig) -> RealRow:
    """Run the experiment ``raw`` in this process as ``config`` (a one-image warm-up run into
    ``<output>-warmup`` first) and time it."""
    from experiments.config import load_config
    from experiments.runner import run_experiment

    torch.set_num_threads(1)
    execution = ["execution.max_concurrent_jobs=1"]
    if config.pooled:
        import ray

        # a new local instance of `workers` CPUs ("local": never another Ray instance already
        # running on this machine), which the runner's JobPool then uses
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            address="local",
            num_cpus=config.workers,
            include_dashboard=False,
            log_to_driver=False,
        )
        execution = ["execution.max_concurrent_jobs=auto", "execution.cpus_per_job=1"]
    warmup = load_config(
        base=raw,
        overrides=[*execution, "data.images=1", f"output={raw['output']}-warmup"],
    )
    began = time.perf_counter()
    run_experiment(warmup, progress=False)
    warmup_seconds = time.perf_counter() - began
    experiment = load_config(base=raw, overrides=execution)
    with TreeCPU() as cpu:
        began = time.perf_counter()
        run_experiment(experiment, progress=False)
        seconds = time.perf_counter() - began
    per_job = int(raw["execution"]["images_per_batch"])
    images = experiment.data.images
    return RealRow(
        config.label,
        config.workers,
        config.pooled,
        images,
        -(-images // per_job),
        seconds,
        cpu.seconds,
        warmup_seconds,
        str(experiment.output),
    )


def real_table(rows: Sequence[RealRow]) -> str:
    """Markdown: per configuration images per second, its ratio to the pool with 1 worker and
    to the in-process loop, CPU time, the warm-up run's wall time, and the largest relative
    results.csv difference to the in-process loop ("n/a" when that run is missing)."""
    pool_one = next((r for r in rows if r.pooled and r.workers == 1), None)
    loop = next((r for r in rows if not r.pooled), None)
    reference = read_results(loop.output) if loop else None
    lines = [
        "| configuration | workers | jobs | wall s | images/s | x vs pool 1 worker "
        "| x vs in-process | CPU s (tree) | warm-up s (1 image) | max rel. diff vs in-process |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        vs_pool = f"{r.images_per_s / pool_one.images_per_s:.2f}" if pool_one else "n/a"
        vs_loop = f"{r.images_per_s / loop.images_per_s:.2f}" if loop else "n/a"
        diff = "n/a"
        if reference is not None:
            diff = f"{max_difference(reference, read_results(r.output))[0]:.1e}"
        lines.append(
            f"| {r.label} | {r.workers} | {r.jobs} | {r.seconds:.1f} | {r.images_per_s:.3f} | "
            f"{vs_pool} | {vs_loop} | {r.cpu_seconds:.1f} | {r.warmup_seconds:.1f} | {diff} |"
        )
    return "\n".join(lines)


def real_target_lines(rows: Sequence[RealRow]) -> list[str]:
    """PASS/FAIL: 2 pool workers over 1 (the judged ratio), and results.csv identity (every
    run against the first, to ``TOLERANCE``; pool against in-process bit for bit)."""
    out = []
    pooled = {r.workers: r for r in rows if r.pooled}
    if 1 in pooled and 2 in pooled:
        ratio = pooled[2].images_per_s / pooled[1].images_per_s
        verdict = "PASS" if ratio >= TARGET_SPEEDUP else "FAIL"
        out.append(
            f"{verdict}: pool with 2 workers = {ratio:.2f}x the images/s of the pool with 1 "
            f"(target >= {TARGET_SPEEDUP}x)"
        )
    else:
        out.append("n/a: the speed-up needs the pool with 1 and with 2 workers")
    if len(rows) < 2:
        return out
    reference = read_results(rows[0].output)
    worst = 0.0
    exact = True
    for r in rows[1:]:
        diff, where = max_difference(reference, read_results(r.output))
        worst = max(worst, diff)
        exact = exact and diff == 0.0
        out.append(f"  {r.label} vs {rows[0].label}: {diff:.1e} (largest at {where})")
    ok = worst <= TOLERANCE
    out.append(
        f"{'PASS' if ok else 'FAIL'}: results.csv {'/'.join(COMPARED)} "
        f"{'bit-identical' if exact else f'within {worst:.1e} relative'} across "
        f"{len(rows)} configurations (tolerance {TOLERANCE:.0e})"
    )
    return out


# -- part 2: the simulated cluster -------------------------------------------------------------
@dataclass(frozen=True)
class SimSettings:
    """The simulated jobs: ``jobs`` DAPS runs of ``problems`` GMM problems x ``particles``,
    ``annealing_steps`` x 5 ODE calls each, on a prior sleeping ``latency`` per call."""

    jobs: int = 32
    problems: int = 4
    particles: int = 4
    annealing_steps: int = 10
    latency: tuple[float, float] = UNET_LATENCY

    @property
    def rows(self) -> int:
        return self.problems * self.particles

    @property
    def prior(self) -> dict[str, Any]:
        return {"name": "gmm", "d": 8, "latency": list(self.latency)}

    def call_seconds(self) -> float:
        return self.latency[0] + self.latency[1] * self.rows


@dataclass
class SimRow:
    """One simulated run on ``nodes`` GPU nodes: the timed phase's wall seconds, the latency
    model's ideal seconds, the driver's CPU seconds, set-up seconds (cluster, pool warm-up),
    jobs run twice, removed nodes, failed jobs, and a digest of every job's values."""

    nodes: int
    jobs: int
    seconds: float
    ideal_seconds: float
    driver_seconds: float
    setup_seconds: float
    retried: int = 0
    removed: int = 0
    failed: int = 0
    digests: dict[str, str] = field(default_factory=dict)

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds

    @property
    def efficiency(self) -> float:
        return efficiency(self.ideal_seconds, self.nodes, self.seconds)

    @property
    def driver_ms_per_job(self) -> float:
        return 1e3 * self.driver_seconds / self.jobs


def efficiency(ideal_seconds: float, nodes: int, seconds: float) -> float:
    """Scheduling efficiency: the latency model's total time over the node-seconds used."""
    return ideal_seconds / (nodes * seconds)


def sim_spec(settings: SimSettings, index: int) -> Any:
    """Job ``index``: DAPS on the MCGdiff instance ``index`` (d = 8, d_y = 1), its measurement
    solved ``settings.problems`` times in one batch with seeds index x problems + p (a batch
    shares its operator's noise level)."""
    from ensemble import EnsembleSettings, EnsembleSpec, OperatorSpec
    from solvers import SolverSpec
    from solvers.priors.gmm import mcgdiff_problem

    problem = mcgdiff_problem(8, 1, index)
    return EnsembleSpec(
        solver=SolverSpec(
            "daps",
            "gmm/pixel_hmc",
            {"annealing_steps": settings.annealing_steps, "mcmc_steps": 4},
        ),
        prior=settings.prior,
        operator=OperatorSpec.of(problem.operator),
        y=problem.y.expand(settings.problems, -1).clone(),
        seed=tuple(index * settings.problems + p for p in range(settings.problems)),
        settings=EnsembleSettings(particles=settings.particles, progress=False),
    )


def sim_specs(settings: SimSettings) -> dict[str, Any]:
    """The ``settings.jobs`` jobs of a run, keyed ``job-<i>``."""
    return {f"job-{i}": sim_spec(settings, i) for i in range(settings.jobs)}


def digest(results: Sequence[Any]) -> str:
    """A job's values: every problem's samples, losses and network calls, hashed."""
    h = hashlib.sha256()
    for r in results:
        h.update(r.all_samples.detach().cpu().contiguous().numpy().tobytes())
        h.update(torch.as_tensor(r.loss).detach().cpu().contiguous().numpy().tobytes())
        h.update(str(r.nfe).encode())
    return h.hexdigest()[:16]


def _remove_busy_node(pool: Any, cluster: Any, nodes: dict[str, Any], after: float, out: list):
    """Remove the first worker node seen running a job for ``after`` seconds."""
    seen: dict[str, float] = {}
    while not out:
        for _, node in pool.running().values():
            if node in nodes and time.monotonic() - seen.setdefault(node, time.monotonic()) > after:
                cluster.remove_node(nodes[node])
                out.append(node)
                break
        time.sleep(0.01)


def run_sim(nodes: int, settings: SimSettings, kill: bool) -> SimRow:
    """One simulated cluster of ``nodes`` GPU nodes in this process (a Ray driver holds one
    cluster, so call it in a fresh process): set up, warm up every node, time the jobs."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray.cluster_utils import Cluster

    from ensemble import JobPool

    began = time.perf_counter()
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": FAST_FAILURE}
    )
    workers = {
        n.node_id: n for n in [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(nodes)]
    }
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    specs = sim_specs(settings)
    warm = SimSettings(settings.jobs, settings.problems, settings.particles, 1, settings.latency)
    try:
        with JobPool(cpus_per_job=1.0, gpus_per_job=1.0) as pool:
            _warm_up(pool, warm, nodes)
            setup = time.perf_counter() - began
            removed: list[str] = []
            if kill:
                after = 0.3 * settings.annealing_steps * 5 * settings.call_seconds()
                threading.Thread(
                    target=_remove_busy_node,
                    args=(pool, cluster, workers, after, removed),
                    daemon=True,
                ).start()
            driver_before = pool.counts().driver_seconds
            start = time.perf_counter()
            for key, spec in specs.items():
                pool.submit(key, spec)
            outcomes = list(pool.results())
            seconds = time.perf_counter() - start
            driver = pool.counts().driver_seconds - driver_before
    finally:
        ray.shutdown()
        cluster.shutdown()
    done = [o for o in outcomes if o.results is not None]
    calls = sum(o.results[0].nfe for o in done)
    return SimRow(
        nodes=nodes,
        jobs=len(outcomes),
        seconds=seconds,
        ideal_seconds=calls * settings.call_seconds(),
        driver_seconds=driver,
        setup_seconds=setup,
        retried=sum(o.attempts > 1 for o in outcomes),
        removed=len(removed),
        failed=len(outcomes) - len(done),
        digests={str(o.key): digest(o.results) for o in done},
    )


def _warm_up(pool: Any, warm: SimSettings, nodes: int) -> None:
    """Run short jobs until every node has finished one: then each node's pool actor has
    started and loaded the prior, and the timed phase measures scheduling only."""
    numbers = itertools.count(10_000)  # keys and instances apart from the timed jobs'
    seen: set[str] = set()
    for _ in range(nodes):
        index = next(numbers)
        pool.submit(f"warm-up-{index}", sim_spec(warm, index))
    for outcome in pool.results():
        if outcome.error is not None:
            raise RuntimeError(f"warm-up job failed: {outcome.error}")
        seen.add(outcome.node)
        if len(seen) < nodes:
            index = next(numbers)
            pool.submit(f"warm-up-{index}", sim_spec(warm, index))


def sim_table(rows: Sequence[SimRow]) -> str:
    """Markdown: per run jobs/s, efficiency, driver ms per job, set-up time, retries."""
    lines = [
        "| nodes (GPUs) | jobs | wall s | ideal s | jobs/s | efficiency | driver ms/job "
        "| set-up s | node removed | jobs re-run | failed |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.nodes} | {r.jobs} | {r.seconds:.2f} | {r.ideal_seconds:.2f} | "
            f"{r.jobs_per_s:.2f} | {r.efficiency:.3f} | {r.driver_ms_per_job:.2f} | "
            f"{r.setup_seconds:.1f} | {'yes' if r.removed else 'no'} | {r.retried} | "
            f"{r.failed} |"
        )
    return "\n".join(lines)


def identical(rows: Sequence[SimRow]) -> tuple[bool, str]:
    """Whether every run produced the same values for every job (and no job failed), and where
    the first difference is."""
    if not rows:
        return True, ""
    reference = rows[0].digests
    for r in rows:
        if r.failed:
            return False, f"{r.failed} job(s) failed at {r.nodes} node(s)"
        if r.digests != reference:
            keys = sorted(set(reference) ^ set(r.digests)) or sorted(
                k for k in reference if reference[k] != r.digests[k]
            )
            return False, f"{r.nodes} node(s) differ from {rows[0].nodes} at {keys[:3]}"
    return True, ""


def sim_target_lines(rows: Sequence[SimRow]) -> list[str]:
    """PASS/FAIL: efficiency at the largest undisturbed node count, driver time per job (the
    worst run), identical values across runs and after the removed node."""
    undisturbed = [r for r in rows if not r.removed]
    out = []
    if undisturbed:
        top = max(undisturbed, key=lambda r: r.nodes)
        verdict = "PASS" if top.efficiency >= TARGET_EFFICIENCY else "FAIL"
        out.append(
            f"{verdict}: scheduling efficiency {top.efficiency:.3f} at {top.nodes} nodes "
            f"(target >= {TARGET_EFFICIENCY})"
        )
        worst = max(r.driver_ms_per_job for r in undisturbed)
        verdict = "PASS" if worst < TARGET_DRIVER_MS else "FAIL"
        out.append(
            f"{verdict}: driver time per job at most {worst:.2f} ms (target < "
            f"{TARGET_DRIVER_MS:.0f} ms)"
        )
    ok, where = identical(undisturbed)
    out.append(
        f"{'PASS' if ok else 'FAIL'}: every job's values identical across "
        f"{len(undisturbed)} node counts{'' if ok else f' ({where})'}"
    )
    for r in rows:
        if not r.removed:
            continue
        ok, where = identical([*undisturbed[:1], r])
        out.append(
            f"{'PASS' if ok else 'FAIL'}: one of {r.nodes} nodes removed mid-run: all {r.jobs} "
            f"jobs finished ({r.retried} re-run elsewhere), values "
            f"{'identical to the undisturbed run' if ok else f'differ ({where})'}"
        )
    return out


# -- the FFHQ UNet latency (on a GPU) -----------------------------------------------------------
def fit_latency(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (a, b) of seconds = a + b x rows over (rows, seconds) points."""
    n = len(points)
    sx = sum(x for x, _ in points)
    sy = sum(y for _, y in points)
    sxx = sum(x * x for x, _ in points)
    sxy = sum(x * y for x, y in points)
    b = (n * sxy - sx * sy) / (n * sxx - sx * sx)
    return (sy - b * sx) / n, b


def time_unet_calls(device: str, batches: Sequence[int], repeats: int) -> list[tuple[int, float]]:
    """Median seconds of a forward call (no gradient) of the FFHQ 256 guided-diffusion UNet
    (random weights, float32) on ``device`` at each batch, after 3 warm-up calls."""
    from solvers.priors.guided_diffusion import GuidedDiffusionUNet, ffhq_256

    torch.manual_seed(0)
    unet = GuidedDiffusionUNet(ffhq_256()).to(device).eval()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    points = []
    with torch.no_grad():
        for batch in batches:
            x = torch.randn(batch, 3, 256, 256, device=device)
            t = torch.full((batch,), 500.0, device=device)
            for _ in range(3):
                unet(x, t)
            times = []
            for _ in range(repeats):
                sync()
                began = time.perf_counter()
                unet(x, t)
                sync()
                times.append(time.perf_counter() - began)
            points.append((batch, statistics.median(times)))
    return points


# -- the command -------------------------------------------------------------------------------
def _in_subprocess(flag: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Run this module with ``flag`` and the JSON ``payload`` in a fresh process; its last
    stdout line is the JSON answer."""
    command = [sys.executable, "-m", MODULE, flag, json.dumps(payload)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{MODULE} {flag} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_csv(path: str, real: Sequence[RealRow], sim: Sequence[SimRow]) -> None:
    """Both tables' rows in one CSV (``part`` = real or sim)."""
    fields = ["part", "label", "workers_or_nodes", "jobs", "seconds", "rate", "cpu_seconds"]
    fields += ["warmup_seconds"]
    fields += ["ideal_seconds", "efficiency", "driver_ms_per_job", "node_removed"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for r in real:
            writer.writerow(
                {
                    "part": "real",
                    "label": r.label,
                    "workers_or_nodes": r.workers,
                    "jobs": r.jobs,
                    "seconds": r.seconds,
                    "rate": r.images_per_s,
                    "cpu_seconds": r.cpu_seconds,
                    "warmup_seconds": r.warmup_seconds,
                }
            )
        for s in sim:
            writer.writerow(
                {
                    "part": "sim",
                    "label": "node removed" if s.removed else "undisturbed",
                    "workers_or_nodes": s.nodes,
                    "jobs": s.jobs,
                    "seconds": s.seconds,
                    "rate": s.jobs_per_s,
                    "ideal_seconds": s.ideal_seconds,
                    "efficiency": s.efficiency,
                    "driver_ms_per_job": s.driver_ms_per_job,
                    "node_removed": bool(s.removed),
                }
            )


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("cluster_scaling", __doc__)
    parser.add_argument("--skip-real", action="store_true", help="skip part 1 (this machine)")
    parser.add_argument("--skip-sim", action="store_true", help="skip part 2 (simulated cluster)")
    parser.add_argument("--images", type=int, default=24, help="digits test images (part 1)")
    parser.add_argument("--images-per-batch", type=int, default=4, help="images per job (part 1)")
    parser.add_argument(
        "--nodes", type=int, nargs="+", default=[1, 2, 4, 8], help="simulated node counts (part 2)"
    )
    parser.add_argument("--jobs", type=int, default=32, help="simulated jobs per run")
    parser.add_argument("--problems", type=int, default=4, help="GMM problems per job")
    parser.add_argument("--particles", type=int, default=4, help="particles per problem")
    parser.add_argument("--annealing-steps", type=int, default=10, help="DAPS steps per job")
    parser.add_argument(
        "--real-annealing-steps",
        type=int,
        default=25,
        help="DAPS annealing steps of the real part (25: the demo's)",
    )
    parser.add_argument(
        "--time-scale", type=float, default=0.5, help="multiplies the UNet latency (a, b)"
    )
    parser.add_argument(
        "--kill-nodes", type=int, default=4, help="nodes of the removed-node run (0: skip it)"
    )
    parser.add_argument("--csv", help="write both tables' rows to this CSV")
    parser.add_argument(
        "--fit-unet", action="store_true", help="time the FFHQ UNet on this device and fit a, b"
    )
    parser.add_argument("--real-one", help=argparse.SUPPRESS)  # internal: one real run
    parser.add_argument("--sim-one", help=argparse.SUPPRESS)  # internal: one simulated cluster
    args = parser.parse_args(argv)
    if args.real_one:
        payload = json.loads(args.real_one)
        row = measure_real(payload["raw"], RealConfig(**payload["config"]))
        print(json.dumps(asdict(row)))
        return
    if args.sim_one:
        payload = json.loads(args.sim_one)
        settings = SimSettings(**{**payload["settings"], "latency": tuple(payload["latency"])})
        print(json.dumps(asdict(run_sim(payload["nodes"], settings, payload["kill"]))))
        return
    if args.fit_unet:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        points = time_unet_calls(device, [1, 2, 4, 8, 16, 32], repeats=15)
        for rows, seconds in points:
            print(f"  {rows} rows: {1e3 * seconds:.2f} ms")
        a, b = fit_latency(points)
        print(f"{device}: a = {1e3 * a:.2f} ms, b = {1e3 * b:.2f} ms/row")
        return

    print(f"# cluster_scaling on {machine()}\n")
    real: list[RealRow] = []
    sim: list[SimRow] = []
    with tempfile.TemporaryDirectory(prefix="cluster_scaling-") as root:
        if not args.skip_real:
            print(
                f"## dipswarm run on this machine: digits prior, {TASK['name']}, {args.images} "
                f"test images, {TARGET_METHOD} ({args.real_annealing_steps} annealing steps), "
                f"{args.images_per_batch} images per "
                "job, tracking and LPIPS off; each configuration in a fresh process after a "
                "1-image warm-up run; CPU s = process tree (driver, Ray, workers)\n"
            )
            for config in REAL_CONFIGS:
                out = f"{root}/{'pool' if config.pooled else 'loop'}-{config.workers}"
                raw = real_experiment(
                    args.images, args.images_per_batch, out, args.real_annealing_steps
                )
                answer = _in_subprocess("--real-one", {"raw": raw, "config": asdict(config)})
                real.append(RealRow(**answer))
                _progress(config.label, real[-1].seconds)
            _print_results(real_table(real), real_target_lines(real))
            print()
    if not args.skip_sim:
        latency = (UNET_LATENCY[0] * args.time_scale, UNET_LATENCY[1] * args.time_scale)
        settings = SimSettings(
            args.jobs, args.problems, args.particles, args.annealing_steps, latency
        )
        print(
            f"## simulated cluster: a head plus N worker nodes of 1 CPU and 1 GPU each "
            f"(ray.cluster_utils.Cluster), JobPool(gpus_per_job=1); {settings.jobs} jobs of "
            f"DAPS on {settings.problems} GMM problems (d = 8) x {settings.particles} particles "
            f"= {settings.rows} rows, {settings.annealing_steps} x 5 network calls each; a "
            f"SIMULATED prior sleeping a + b x rows per call, a = {1e3 * latency[0]:.2f} ms, "
            f"b = {1e3 * latency[1]:.3f} ms/row (FFHQ 256 UNet forward on an H200: "
            f"{1e3 * UNET_LATENCY[0]:.1f} + {1e3 * UNET_LATENCY[1]:.2f} ms/row, x "
            f"{args.time_scale}) = {1e3 * settings.call_seconds():.1f} ms per call; timed after "
            "every node has run a warm-up job\n"
        )
        runs = [(n, False) for n in args.nodes]
        if args.kill_nodes:
            runs.append((args.kill_nodes, True))
        for nodes, kill in runs:
            payload = {
                "nodes": nodes,
                "kill": kill,
                "settings": {k: v for k, v in asdict(settings).items() if k != "latency"},
                "latency": list(latency),
            }
            sim.append(SimRow(**_in_subprocess("--sim-one", payload)))
            _progress(f"{nodes} node(s){', one removed mid-run' if kill else ''}", sim[-1].seconds)
        _print_results(sim_table(sim), sim_target_lines(sim))
    print(f"\n1-min load average at the end: {os.getloadavg()[0]:.2f}")
    if args.csv:
        write_csv(args.csv, real, sim)
        print(f"\nrows written to {args.csv}")


def _progress(label: str, seconds: float) -> None:
    """One finished configuration, with the machine's load (shared cores disturb timings)."""
    print(f"  {label}: {seconds:.1f} s, load average {os.getloadavg()[0]:.2f}", flush=True)


def _print_results(table: str, targets: Sequence[str]) -> None:
    """A part's table, then its PASS/FAIL lines."""
    print()
    print(table)
    print()
    for line in targets:
        print(line)


if __name__ == "__main__":
    main()
