"""Solver overhead benchmark: each solver's wall time against its network calls, side by side.

Every registered solver runs ``sample`` on a shipped prior ("digits" for pixel solvers,
"digits_latent" for latent ones) with a cheap operator (random inpainting of 1x32x32 images)
and reduced step counts. A first run records every network call the solver makes (denoiser;
decoder and encoder of a latent prior) with its input shape and whether the call builds an
autograd graph that the solver then backpropagates through. Then, repeat by repeat and in the
same process, the benchmark times the solver's whole ``sample`` and, just before and just after
it, each kind of recorded call alone: without gradient under ``torch.no_grad``, with gradient
as forward + backward of the output's sum w.r.t. the input. Times are taken on the wall clock
and as this process's CPU time, which other jobs on shared cores disturb much less; figures
are medians over repeats.

overhead = run time / (sum over the run's denoiser calls of that call's time) - 1, which is
wall / (NFE x call time) - 1 when all calls are alike. ``Result.nfe`` counts batched denoiser
calls (``Prior.nfe`` grows by one per ``denoise``/``score`` call whatever the batch size), so
one NFE here is a call on all N particles at once, not one particle.

Run: ``python -m experiments.benchmarks.solver_overhead`` (or ``dipswarm bench solver_overhead``).
Target (issue 4): overhead under 10% for DAPS, DPS and noise-space Langevin, judged on the
in-run overhead beyond all network calls (``target_met`` says why).
"""

from __future__ import annotations

import contextlib
import cProfile
import functools
import pstats
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

import solvers
from experiments.cli_help import bench_parser
from solvers import SolverSpec

TARGET_PERCENT = 10.0
CLOCKS = ("wall", "cpu")
CALL_SIGMA = 1.0  # noise level of the timed denoiser calls (the network cost does not depend on it)
OPERATOR = "inpaint_random"
IMAGE_SHAPE = (1, 32, 32)
NETWORK_METHODS = ("denoise", "score", "decode", "encode")
DENOISER_METHODS = ("denoise", "score")
REPO = Path(__file__).resolve().parents[2]


PRIORS = {"pixel": "digits", "latent": "digits_latent"}  # shipped prior per backbone


@dataclass(frozen=True)
class Case:
    """One benchmarked configuration: a solver ``spec`` on a shipped ``prior``.

    ``target``: whether the 10% overhead target of the issue applies (DAPS, DPS, noise-space
    Langevin); ``prior_options``: loader options of the prior (``solvers.priors.loading.load``).
    """

    label: str
    spec: SolverSpec
    prior: str
    target: bool = False
    prior_options: tuple[tuple[str, Any], ...] = ()

    @property
    def prior_spec(self) -> str:
        """The prior's name with its loader options, e.g. ``digits (ode_steps=3)``."""
        options = ", ".join(f"{k}={v}" for k, v in self.prior_options)
        return f"{self.prior} ({options})" if options else self.prior


# The built-in solvers with their presets for the benchmark's operator and step counts cut for
# a short run; ``cases`` adds a default case for every other registered solver.
CASES: tuple[Case, ...] = (
    Case("dps", SolverSpec("dps", "pixel/inpaint_random", {"num_steps": 20}), "digits", True),
    Case(
        "latent_dps",
        SolverSpec("latent_dps", "ldm/natural", {"num_steps": 20}),
        "digits_latent",
        True,
    ),
    Case(
        "daps pixel ULA",
        SolverSpec("daps", "pixel_ula/inpaint_random", {"annealing_steps": 10, "sigma_max": 20.0}),
        "digits",
        True,
    ),
    Case(
        "daps pixel HMC",
        SolverSpec("daps", "pixel_hmc/inpaint_random", {"annealing_steps": 10, "sigma_max": 20.0}),
        "digits",
        True,
    ),
    Case(
        "daps latent HMC",
        SolverSpec("daps", "ldm_hmc/inpaint_random", {"annealing_steps": 4}),
        "digits_latent",
        True,
    ),
    Case(
        "daps_opt",
        SolverSpec(
            "daps_opt",
            "ldm_hmc_opt5/inpaint_random",
            {"annealing_steps": 4, "opt_start": 1, "opt_end": 3},
        ),
        "digits_latent",
    ),
    Case(
        "resample latent",
        SolverSpec(
            "resample",
            "cpu",
            {"steps": 20, "pixel_iters": 50, "latent_iters": 20, "latent_window": 10},
        ),
        "digits_latent",
    ),
    # The shipped priors bring their own ODE generator (the prior's ``ode_steps``, Heun), which
    # noise_langevin uses instead of its generator_* fields: the prior is loaded with 3 steps.
    Case(
        "noise_langevin",
        SolverSpec("noise_langevin", None, {"warm_steps": 4, "langevin_steps": 4}),
        "digits",
        True,
        (("ode_steps", 3),),
    ),
    Case("cdps", SolverSpec("cdps", "cpu", {"steps": 20}), "digits"),
)


def default_case(name: str) -> Case:
    """A case for registered solver ``name``: on the shipped prior of the first backbone it
    runs on, with its preset for the benchmark's operator there if it has one, else defaults."""
    backbone = solvers.backbones(name)[0]
    fitting = [
        preset
        for preset, info in solvers.presets(name).items()
        if info.task == OPERATOR and info.backbone in (None, backbone)
    ]
    return Case(name, SolverSpec(name, fitting[0] if fitting else None), PRIORS[backbone])


def cases() -> list[Case]:
    """``CASES``, then a default case for every registered solver that has none there."""
    covered = {case.spec.name for case in CASES}
    return [*CASES, *(default_case(n) for n in solvers.available() if n not in covered)]


class CallKey(NamedTuple):
    """A kind of network call: prior method, input shape, and whether it builds a graph."""

    method: str
    shape: tuple[int, ...]
    graph: bool


@dataclass(frozen=True)
class Problem:
    """A prior with an operator and one measurement of a real test digit."""

    prior: Any
    operator: Any
    y: torch.Tensor


class Timing(NamedTuple):
    """Seconds on the wall clock and of this process's CPU time (the latter is less disturbed
    when other jobs share the cores: time spent descheduled is not counted)."""

    wall: float
    cpu: float


@dataclass
class Row:
    """Figures of one case at one particle count (times in seconds, medians over repeats)."""

    case: Case
    n: int
    steps: int
    nfe: int
    run: Timing
    calls: dict[CallKey, int]
    call_times: dict[CallKey, Timing]
    state_bytes: float
    # methods -> clock -> run time / time inside the run's own calls of methods - 1 (median)
    in_run: dict[tuple[str, ...], dict[str, float]] = field(default_factory=dict)
    peak_bytes: float = float("nan")
    marginal_peak_bytes: float = float("nan")

    def denoiser_seconds(self, clock: str = "wall") -> float:
        """NFE x call time: the summed time of the run's denoiser calls timed alone."""
        return predicted_seconds(self.calls, self.call_times, DENOISER_METHODS, clock)

    def overhead(self, clock: str = "wall", methods: tuple[str, ...] = DENOISER_METHODS) -> float:
        """Run time / summed time of its ``methods`` calls - 1, on ``clock``."""
        predicted = predicted_seconds(self.calls, self.call_times, methods, clock)
        return overhead(getattr(self.run, clock), predicted)


def overhead(seconds: float, predicted: float) -> float:
    """seconds / predicted - 1 (as a fraction; inf when nothing was predicted)."""
    return seconds / predicted - 1.0 if predicted > 0 else float("inf")


def predicted_seconds(
    calls: dict[CallKey, int],
    call_times: dict[CallKey, Timing],
    methods: tuple[str, ...],
    clock: str = "wall",
) -> float:
    """Sum over call kinds of ``methods`` of count x time of one such call on ``clock``."""
    return sum(
        count * getattr(call_times[key], clock)
        for key, count in calls.items()
        if key.method in methods
    )


def timed(fn: Callable[[], Any]) -> tuple[Any, Timing]:
    """``fn()`` and its wall and CPU time."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, Timing(time.perf_counter() - wall, time.process_time() - cpu)


def median_timing(samples: list[Timing]) -> Timing:
    """Median wall and median CPU time (taken separately)."""
    return Timing(
        statistics.median(s.wall for s in samples), statistics.median(s.cpu for s in samples)
    )


# -- problem and call recording -------------------------------------------------------------------
def load_problem(prior_name: str, **options: Any) -> Problem:
    """The shipped prior ``prior_name`` (loader ``options``), random inpainting of 1x32x32
    images, and y from the first test digit."""
    import operators
    from experiments.data import load_builtin
    from solvers.priors.loading import load

    prior = load(prior_name, **options)
    operator = operators.build(OPERATOR, shape=IMAGE_SHAPE)
    truth = load_builtin("digits", "test")[:1]
    y = operator.measure(truth, torch.Generator().manual_seed(0))
    return Problem(prior, operator, y)


def now() -> Timing:
    """The current wall-clock and process CPU-time readings."""
    return Timing(time.perf_counter(), time.process_time())


class _Stamp(torch.autograd.Function):
    """Identity whose backward appends the time to a list: placed on a network call's output
    and input, its two backward stamps bracket the network's backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, stamps: list[Timing]) -> torch.Tensor:
        ctx.stamps = stamps
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        ctx.stamps.append(now())
        return grad, None


@dataclass
class CallLog:
    """The network calls of a recorded block: counts by kind, and per call its time stamps
    (forward start and end, then backward start and end once its backward has run)."""

    counts: Counter[CallKey] = field(default_factory=Counter)
    stamps: list[tuple[str, list[Timing]]] = field(default_factory=list)

    def inside(self, methods: tuple[str, ...]) -> Timing:
        """Time spent inside the calls of ``methods``, forward and backward passes."""
        wall = cpu = 0.0
        for method, marks in self.stamps:
            if method not in methods:
                continue
            pairs = [(0, 1), (2, 3)] if len(marks) == 4 else [(0, 1)]
            wall += sum(marks[j].wall - marks[i].wall for i, j in pairs)
            cpu += sum(marks[j].cpu - marks[i].cpu for i, j in pairs)
        return Timing(wall, cpu)


@contextlib.contextmanager
def recording(prior: Any) -> Iterator[CallLog]:
    """Log the prior's network calls (``CallLog``) while the block runs.

    The methods are wrapped on the instance (never on the class) and restored afterwards. A
    call's kind says whether it built a graph (its output requires grad); such calls get
    ``_Stamp`` marks on input and output, so that their backward pass is timed too.
    """
    log = CallLog()
    methods = [m for m in NETWORK_METHODS if prior.is_latent or m in DENOISER_METHODS]

    def wrap(name: str, method: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        @functools.wraps(method)
        def logged(x: torch.Tensor, *args: Any) -> torch.Tensor:
            marks = [now()]
            out = method(_Stamp.apply(x, marks) if x.requires_grad else x, *args)
            marks.append(now())
            log.counts[CallKey(name, tuple(x.shape), bool(out.requires_grad))] += 1
            log.stamps.append((name, marks))
            return _Stamp.apply(out, marks) if out.requires_grad else out

        return logged

    for name in methods:
        setattr(prior, name, wrap(name, getattr(prior, name)))
    try:
        yield log
    finally:
        for name in methods:
            delattr(prior, name)


def call_seconds(prior: Any, key: CallKey, count: int, seed: int = 0) -> list[Timing]:
    """Times of ``count`` calls of kind ``key`` (a graph call includes its backward)."""
    x = torch.randn(key.shape, generator=torch.Generator().manual_seed(seed)).to(prior.dtype)
    method = getattr(prior, key.method)
    extra = (CALL_SIGMA,) if key.method in DENOISER_METHODS else ()

    def call(x_in: torch.Tensor) -> None:
        if key.graph:
            torch.autograd.grad(method(x_in, *extra).sum(), x_in)
        else:
            with torch.no_grad():
                method(x_in, *extra)

    inputs = [x.clone().requires_grad_(key.graph) for _ in range(count)]
    return [timed(lambda x_in=x_in: call(x_in))[1] for x_in in inputs]


# -- memory ---------------------------------------------------------------------------------------
def state_bytes(state: Any) -> int:
    """Bytes of one state's per-particle data: x, x0, extra tensors and generator states."""
    tensors = [state.x, state.x0, *state.extra.values()]
    generators = sum(g.get_state().numel() for g in state.generators)
    return sum(t.nelement() * t.element_size() for t in tensors) + generators


def peak_allocated_bytes(fn: Callable[[], object]) -> int:
    """Peak of the torch CPU bytes allocated and still live during ``fn()``, net of the start.

    From the allocation and free events of ``torch.profiler`` (profile_memory): memory held
    before the call (weights, inputs) is not counted; memory outside torch's allocator is not
    seen.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


# -- one case -------------------------------------------------------------------------------------
def build_solver(case: Case) -> Any:
    """The case's solver: defaults, then its preset, then its overrides."""
    return case.spec.build()


def measure(case: Case, problem: Problem, n: int, repeats: int, calls_per_repeat: int = 5) -> Row:
    """Record one run's calls and state size, then time runs and calls interleaved.

    The timed runs are logged too (a few microseconds per network call), for the time spent
    inside their network calls.
    """
    solver = build_solver(case)
    sizes: list[int] = []

    def sample(callback: Callable[[int, Any], None] | None = None) -> Any:
        return solver.sample(
            problem.prior, problem.operator, problem.y, n=n, seed=0, callback=callback
        )

    with recording(problem.prior) as log:  # also the warm-up run
        result = sample(lambda _, state: sizes.append(state_bytes(state)))
    calls = dict(log.counts)
    if result.nfe != sum(c for k, c in calls.items() if k.method in DENOISER_METHODS):
        raise RuntimeError(
            f"{case.label}: Result.nfe {result.nfe} disagrees with the recorded calls"
        )
    for key in calls:  # warm-up of each call kind
        call_seconds(problem.prior, key, 1)
    runs: list[Timing] = []
    in_run: dict[tuple[str, ...], dict[str, list[float]]] = {
        methods: {clock: [] for clock in CLOCKS} for methods in (DENOISER_METHODS, NETWORK_METHODS)
    }
    times: dict[CallKey, list[Timing]] = {key: [] for key in calls}
    half = calls_per_repeat // 2
    for _ in range(repeats):  # calls timed just before and just after each run
        for key in calls:
            times[key] += call_seconds(problem.prior, key, half)
        with recording(problem.prior) as log:
            runs.append(timed(sample)[1])
        for methods, fractions in in_run.items():
            spent = log.inside(methods)
            for clock, values in fractions.items():
                values.append(overhead(getattr(runs[-1], clock), getattr(spent, clock)))
        for key in calls:
            times[key] += call_seconds(problem.prior, key, calls_per_repeat - half)
    return Row(
        case=case,
        n=n,
        steps=solver.num_steps,
        nfe=result.nfe,
        run=median_timing(runs),
        calls=calls,
        call_times={key: median_timing(t) for key, t in times.items()},
        state_bytes=max(sizes, default=0) / n,
        in_run={
            methods: {clock: statistics.median(v) for clock, v in fractions.items()}
            for methods, fractions in in_run.items()
        },
    )


def measure_memory(row: Row, problem: Problem) -> None:
    """Fill the peak bytes at N and the marginal peak per particle, (peak(2N) - peak(N)) / N."""
    solver = build_solver(row.case)
    peaks = [
        peak_allocated_bytes(
            lambda m=m: solver.sample(problem.prior, problem.operator, problem.y, n=m, seed=0)
        )
        for m in (row.n, 2 * row.n)
    ]
    row.peak_bytes = peaks[0]
    row.marginal_peak_bytes = (peaks[1] - peaks[0]) / row.n


def profile_top(case: Case, problem: Problem, n: int, top: int = 10) -> list[str]:
    """cProfile of one run: where solver code (outside the prior's networks) spends its time.

    Lists the calls made directly from repository code other than the priors (solvers,
    operators), grouped by (callee, caller) and ranked by the callee's cumulative time, with
    the calls into the prior's networks left out; nested entries overlap.
    """
    solver = build_solver(case)
    profiler = cProfile.Profile()
    profiler.enable()
    solver.sample(problem.prior, problem.operator, problem.y, n=n, seed=0)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = max(entry[3] for entry in stats.values())
    edges = [
        (timing[3], timing[1], _where(callee), _where(caller))
        for callee, entry in stats.items()
        if not _in_repo(callee, "solvers/priors")
        for caller, timing in entry[4].items()
        if _in_repo(caller) and not _in_repo(caller, "solvers/priors")
    ]
    edges.sort(reverse=True)
    lines = [f"profiled run {total:.2f} s (cProfile adds its own cost per Python call)"]
    lines += [
        f"  {ct:7.3f} s {100 * ct / total:5.1f}%  {calls:>7} calls  {callee} <- {caller}"
        for ct, calls, callee, caller in edges[:top]
    ]
    return lines


def _in_repo(func: tuple[str, int, str], under: str = "") -> bool:
    """Whether a cProfile function key lies in the repository (below ``under``), benchmarks out."""
    path = Path(func[0])
    if not path.is_absolute() or not path.is_relative_to(REPO / under):
        return False
    return not path.is_relative_to(REPO / "experiments" / "benchmarks")


def _where(func: tuple[str, int, str]) -> str:
    """'name (path:line)' with repository paths made relative; built-ins by name."""
    filename, line, name = func
    if _in_repo(func):
        return f"{name} ({Path(filename).relative_to(REPO)}:{line})"
    return name if filename == "~" else f"{name} ({Path(filename).name}:{line})"


# -- output ---------------------------------------------------------------------------------------
def describe_calls(row: Row) -> str:
    """'count x wall ms (kind)' for each kind of network call of the run."""
    parts = []
    for key, count in sorted(row.calls.items()):
        kind = "grad" if key.graph else "no grad"
        parts.append(f"{key.method} {count} x {1e3 * row.call_times[key].wall:.1f} ms ({kind})")
    return "; ".join(parts)


def settings(case: Case) -> str:
    """The preset and overrides, short."""
    preset = case.spec.preset or "defaults"
    over = ", ".join(f"{k}={v}" for k, v in case.spec.overrides.items())
    return f"{preset}; {over}" if over else preset


def target_met(row: Row) -> str:
    """'yes'/'no' on the wall and on the CPU clock, or 'n/a' where the target does not apply.

    Judged on the in-run overhead beyond all network calls: for the same code, the isolated
    call time moved the isolated-call overhead from -9% to +24% between two idle runs here (a
    negative overhead is impossible), while the in-run figure moved by 0.2 points.
    """
    if not row.case.target:
        return "n/a"
    in_run = row.in_run[NETWORK_METHODS]
    verdicts = ["yes" if in_run[c] < TARGET_PERCENT / 100 else "no" for c in CLOCKS]
    text = " / ".join(verdicts)
    return text if verdicts == ["yes", "yes"] else f"**{text}**"


def pair(fractions: list[float]) -> str:
    """Two overhead fractions as 'a% / b%'."""
    return " / ".join(f"{100 * f:+.1f}%" for f in fractions)


def table(rows: list[Row]) -> str:
    """The Markdown table of the benchmark."""
    lines = [
        "| solver | prior | preset; overrides | N | steps | NFE | wall s | network calls: count x "
        "ms (grad?) | NFE x call s | overhead wall / CPU | target met? (in-run, all network "
        "calls) wall / CPU | in-run "
        "overhead wall / CPU | beyond all network calls: overhead / in-run, wall / CPU | "
        "state B/particle | peak MB at N | peak KB/particle |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        nets = [r.overhead(c, NETWORK_METHODS) for c in CLOCKS]
        nets += [r.in_run[NETWORK_METHODS][c] for c in CLOCKS]
        lines.append(
            f"| {r.case.label} | {r.case.prior_spec} | {settings(r.case)} | {r.n} | {r.steps} | "
            f"{r.nfe} | {r.run.wall:.3f} | {describe_calls(r)} | {r.denoiser_seconds():.3f} | "
            f"{pair([r.overhead(c) for c in CLOCKS])} | {target_met(r)} | "
            f"{pair([r.in_run[DENOISER_METHODS][c] for c in CLOCKS])} | "
            f"{pair(nets[:2])}; {pair(nets[2:])} | {r.state_bytes:,.0f} | "
            f"{r.peak_bytes / 2**20:.2f} | {r.marginal_peak_bytes / 2**10:.1f} |"
        )
    return "\n".join(lines)


LEGEND = """\
NFE: Result.nfe, batched denoiser calls (one call = all N particles). NFE x call s: the run's
denoiser calls, each timed alone at the same batch and shape (grad = forward + backward of the
output sum w.r.t. the input, as the solver backpropagates through it), wall clock.
overhead = run time / (NFE x call time) - 1, on the wall clock and on this process's CPU time
(less disturbed by other jobs on the cores). in-run overhead = run time / time spent inside
the run's own denoiser calls (forward, and backward where there is one, bracketed by autograd
marks) - 1: no isolated timing, so load changes between runs and calls cancel out. "beyond all
network calls" also counts the latent prior's decoder/encoder calls (not in NFE), both ways.
target: under 10% for DAPS, DPS and noise-space Langevin, judged on the in-run overhead beyond
all network calls (the isolated call time is not reproducible to 10% between runs here).
state B/particle: largest per-step size of the State's per-particle data (x, x0, extra
tensors, generator state) / N. peak MB at N: peak of torch CPU tensor bytes live at once
during one sample() (torch.profiler memory events; weights and memory held before the run
excluded).
peak KB/particle: (peak at 2N - peak at N) / N."""


def select(names: list[str] | None) -> list[Case]:
    """Cases whose label or solver name is in ``names`` (all when None)."""
    every = cases()
    if not names:
        return every
    chosen = [c for c in every if c.label in names or c.spec.name in names]
    if not chosen:
        raise SystemExit(f"no case matches {names}; cases: {', '.join(c.label for c in every)}")
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("solver_overhead", __doc__)
    parser.add_argument("--particles", type=int, nargs="+", default=[4], help="N values")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median)")
    parser.add_argument("--calls", type=int, default=5, help="timed calls per kind and repeat")
    parser.add_argument("--solvers", nargs="+", help="case labels or solver names (default all)")
    parser.add_argument("--no-memory", action="store_true", help="skip the profiled memory runs")
    parser.add_argument(
        "--profile",
        choices=("auto", "all", "none"),
        default="auto",
        help="cProfile runs: auto = target cases over 10%% overhead",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    cases = select(args.solvers)
    problems = {c.prior_spec: load_problem(c.prior, **dict(c.prior_options)) for c in cases}
    rows = [
        measure(case, problems[case.prior_spec], n, args.repeats, args.calls)
        for n in args.particles
        for case in cases
    ]
    if not args.no_memory:
        for row in rows:
            measure_memory(row, problems[row.case.prior_spec])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU, float32, "
        f"operator {OPERATOR} {IMAGE_SHAPE}, median of {args.repeats} runs and "
        f"{args.repeats * args.calls} calls per kind, interleaved\n"
    )
    print(table(rows))
    print("\n" + LEGEND)
    for row in rows:
        worst = max([*map(row.overhead, CLOCKS), *row.in_run[DENOISER_METHODS].values()])
        over = row.case.target and worst >= TARGET_PERCENT / 100
        if args.profile == "all" or (args.profile == "auto" and over):
            print(f"\n### profile: {row.case.label}, N = {row.n}")
            print("\n".join(profile_top(row.case, problems[row.case.prior_spec], row.n)))
    print(f"\nbenchmark run time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
