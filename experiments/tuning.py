"""Hyperparameter studies of one method: ``dipswarm tune CONFIG [overrides]``.

A tune config is either

- an experiment config (experiments/config.py) with one task and one method (or ``search.task``
  and ``search.method`` naming them) on the validation split (``data.split: val``; the test
  split is refused), plus a ``search:`` section; the objective is the mean of an image metric
  (PSNR, SSIM, LPIPS or the measurement loss) over the validation images; or
- a Gaussian-mixture config: ``name``, ``gmm`` (problem size, instances, particles),
  ``methods``, ``tracking``, ``output``, ``seed`` and ``search``; the objective is the mean
  sliced Wasserstein distance to the exact posterior over MCGdiff instances numbered from
  ``GMM_FIRST_TUNING_INSTANCE`` up (lower numbers are held out for testing).

The ``search`` section (``SearchConfig``) names the metric (the mode follows from it), the
budget, the sampler, ASHA, and the space: by default every numeric field the solver declares
(``solvers.config``: range, log scale), restricted with ``fields``, with ``fix`` and ``narrow``
edits. Dotted command-line overrides reach both parts (``search.num_samples=8``,
``search.narrow.lr=[1.0e-5,1.0e-3]``, ``methods.daps.overrides.mcmc_steps=10``).

Objectives report the running mean after each image or instance (step = images done), so ASHA
compares trials at equal steps and stops poor ones early; every trial sees the same images,
measurements and seeds. After the study the best config is written as a YAML preset: for image
studies an experiment config that ``dipswarm run`` accepts (the method's overrides updated,
``data.split`` back to ``test``), for GMM studies ``solver``, ``preset`` and ``overrides``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml

from experiments.config import (
    ConfigError,
    ExperimentConfig,
    MethodConfig,
    TrackingConfig,
    apply_override,
    build_section,
    check_fields,
    load_config,
    read_yaml,
)
from search.space import Dimension, Fixed, SpaceError, check_space, space_from_ranges

if TYPE_CHECKING:
    import search

METRIC_MODES = {
    "psnr": "max",
    "ssim": "max",
    "lpips": "min",
    "measurement_loss": "min",
    "sliced_wasserstein": "min",
}
IMAGE_METRICS = ("psnr", "ssim", "lpips", "measurement_loss")
GMM_METRIC = "sliced_wasserstein"
TUNING_SPLIT = "val"
SAMPLERS = ("tpe", "gp", "cmaes", "random")
ASHA_KEYS = ("max_t", "grace_period", "reduction_factor")
# MCGdiff instances 0 .. 9999 are held out for testing (experiments/benchmarks/gmm.py numbers
# its instances from 0, 1000 per --seed); GMM studies tune on instances from here up.
GMM_FIRST_TUNING_INSTANCE = 10_000
# Independent random streams of one GMM instance.
_REFERENCE_SALT, _FLOOR_SALT, _SLICE_SALT = 0x2EF, 0xF10, 0x511CE
PRESET_FILE = "best.yaml"
TRIALS_FILE = "trials.csv"


# ---------------------------------------------------------------- configs


@dataclass
class SearchConfig:
    """The ``search:`` section of a tune config."""

    metric: str = "psnr"
    num_samples: int = 8
    sampler: str = "tpe"
    seed: int = 0
    # ASHA early stopping: max_t (default: the images or instances of a trial), grace_period,
    # reduction_factor; null or false turns it off.
    asha: dict[str, int] | None = field(default_factory=dict)
    max_concurrent: int = 1
    task: str | None = None  # which task of the config (needed when it lists several)
    method: str | None = None  # which method of the config (needed when it lists several)
    fields: list[str] | None = None  # fields to search (default: every numeric field)
    fix: dict[str, Any] = field(default_factory=dict)
    narrow: dict[str, Any] = field(default_factory=dict)
    points: list[dict[str, Any]] = field(default_factory=list)  # configs tried first
    start_from_method: bool = True  # try the method's own values first
    name: str | None = None  # the study's name (default: the config's name)
    storage_dir: str | None = None  # where studies live (default: the config's output)
    resume: bool = False
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # default: 1 for a CUDA device with a local ensemble

    @property
    def mode(self) -> str:
        """The mode ("max" or "min") that the metric implies."""
        return METRIC_MODES[self.metric]


@dataclass
class GMMConfig:
    """The Gaussian-mixture problems of a GMM study (shared/reference/gmm_benchmark.md)."""

    d: int = 8
    d_y: int = 2
    instances: int = 4
    first_instance: int = GMM_FIRST_TUNING_INSTANCE
    particles: int = 500
    reference_samples: int = 1000
    slices: int = 100
    latent: bool = False

    def instance_seeds(self) -> list[int]:
        """The MCGdiff instance numbers a trial runs, in order."""
        return list(range(self.first_instance, self.first_instance + self.instances))


@dataclass
class TuneConfig:
    """A validated study: what each trial runs, the space, and how the search proceeds."""

    name: str
    search: SearchConfig
    method: MethodConfig
    space: dict[str, Dimension]
    output: Path
    tracking: TrackingConfig
    seed: int = 0
    experiment: ExperimentConfig | None = None  # image studies
    gmm: GMMConfig | None = None  # GMM studies

    @property
    def storage_dir(self) -> Path:
        """Folder of the study storage (Tune experiment, Optuna journal)."""
        return Path(self.search.storage_dir or self.output).expanduser().resolve()

    @property
    def study_dir(self) -> Path:
        """The study's own folder (``storage_dir/name``)."""
        return self.storage_dir / self.name

    @property
    def steps(self) -> int:
        """Images or instances per trial (the fidelity ASHA schedules over)."""
        if self.gmm is not None:
            return self.gmm.instances
        assert self.experiment is not None
        return _image_count(self.experiment)

    def objective(self) -> ImageObjective | GMMObjective:
        """The trial function."""
        if self.gmm is not None:
            return GMMObjective(self.method, self.gmm, self.seed)
        assert self.experiment is not None
        return ImageObjective(self.experiment, self.search.metric)

    def asha(self) -> dict[str, int] | None:
        """ASHA settings for ``search.tune`` (None: off, or a single step per trial)."""
        if self.search.asha is None or self.steps < 2:
            return None
        return {"max_t": self.steps, **self.search.asha}

    def points(self) -> list[dict[str, Any]]:
        """Configs tried first: the method's own values (where they lie in the space), then
        ``search.points``."""
        points = [dict(p) for p in self.search.points]
        if self.search.start_from_method:
            own = method_values(self.method)
            start = {
                name: own[name]
                for name, dim in self.space.items()
                if not isinstance(dim, Fixed) and dim.contains(own[name])
            }
            if start and start not in points:
                points.insert(0, start)
        return points

    def resources(self) -> dict[str, float] | list[dict[str, float]]:
        """Per-trial resources: the trial, plus a bundle per Ray ensemble worker it starts."""
        cpus = self.search.cpus_per_trial
        if self.experiment is None:
            return {"cpu": cpus, "gpu": 0}
        ens = self.experiment.method_ensemble(self.method)
        if ens.backend == "ray":
            worker = {"CPU": ens.cpus_per_worker}
            if ens.gpus_per_worker:
                worker["GPU"] = ens.gpus_per_worker
            return [{"CPU": cpus}] + [dict(worker) for _ in range(ens.workers)]
        gpus = self.search.gpus_per_trial
        if gpus is None:
            gpus = 1.0 if self.experiment.device.startswith("cuda") else 0.0
        return {"cpu": cpus, "gpu": gpus}


def load_tune_config(path: str | Path, overrides: Sequence[str] = ()) -> TuneConfig:
    """A tune config from YAML with dotted overrides (``search.*`` included), validated."""
    return tune_config_from_dict(read_yaml(path), overrides)


def tune_config_from_dict(raw: Mapping[str, Any], overrides: Sequence[str] = ()) -> TuneConfig:
    """A tune config from a mapping (as read from YAML) with dotted overrides, validated."""
    raw = copy.deepcopy(dict(raw))
    for item in overrides:
        apply_override(raw, item)
    search = parse_search(raw.pop("search", None) or {})
    if "gmm" in raw:
        return _gmm_config(raw, search)
    return _image_config(raw, search)


def parse_search(raw: Any) -> SearchConfig:
    """The ``search`` section, checked field by field (messages name ``search.<field>``)."""
    check_fields(raw, [f.name for f in dataclasses.fields(SearchConfig)], "search")
    values = {name: _SEARCH_FIELDS[name](value, f"search.{name}") for name, value in raw.items()}
    return SearchConfig(**values)


def _image_config(raw: dict[str, Any], search: SearchConfig) -> TuneConfig:
    """An image study: an experiment config reduced to one task and one method."""
    experiment = load_config(None, [], base=raw)
    task = _pick(experiment.tasks, search.task, "task")
    method = _pick(experiment.methods, search.method, "method")
    experiment = dataclasses.replace(experiment, tasks=[task], methods=[method])
    if experiment.data.split != TUNING_SPLIT:
        raise ConfigError(
            f"data.split = {experiment.data.split!r}: a study tunes on the validation split "
            f"only, never on the test split; set data.split={TUNING_SPLIT} (the best config's "
            "preset switches back to test)"
        )
    if search.metric not in IMAGE_METRICS:
        raise ConfigError(
            f"search.metric = {search.metric!r}; image studies allow: {', '.join(IMAGE_METRICS)}"
        )
    if search.metric == "lpips" and not experiment.metrics.lpips:
        raise ConfigError("search.metric = 'lpips' needs metrics.lpips: true")
    method = dataclasses.replace(method, spec=method.spec_for(task))
    experiment = dataclasses.replace(experiment, methods=[method])
    output = Path(experiment.output).expanduser().resolve()
    return _checked(
        TuneConfig(
            name=search.name or experiment.name,
            search=search,
            method=method,
            space=build_space(method, search),
            output=output,
            tracking=experiment.tracking,
            seed=experiment.seed,
            experiment=dataclasses.replace(experiment, output=str(output)),
        )
    )


def _gmm_config(raw: dict[str, Any], search: SearchConfig) -> TuneConfig:
    """A Gaussian-mixture study."""
    check_fields(raw, ("name", "gmm", "methods", "tracking", "output", "seed", "search"), "")
    gmm = _gmm_problems(raw.get("gmm") or {})
    methods = raw.get("methods")
    if not isinstance(methods, list) or not methods:
        raise ConfigError("methods must list at least one method (name, solver, preset)")
    method = _pick([_method(m, i) for i, m in enumerate(methods)], search.method, "method")
    if search.metric != GMM_METRIC:
        raise ConfigError(f"search.metric = {search.metric!r}; GMM studies use {GMM_METRIC!r}")
    name = _typed(raw.get("name", "tune_gmm"), str, "name")
    seed = _integer(raw.get("seed", 0), "seed")
    output = Path(_typed(raw.get("output", "dipswarm-tune"), str, "output"))
    return _checked(
        TuneConfig(
            name=search.name or name,
            search=search,
            method=method,
            space=build_space(method, search),
            output=output.expanduser().resolve(),
            tracking=_tracking(raw.get("tracking") or {}),
            seed=seed,
            gmm=gmm,
        )
    )


def _checked(config: TuneConfig) -> TuneConfig:
    """``config`` after checking its fixed values and start points against the solver."""
    import search as search_pkg
    import solvers

    fixed = {k: d.value for k, d in config.space.items() if isinstance(d, Fixed)}
    try:
        solvers.build(
            config.method.solver, config.method.preset, **{**config.method.overrides, **fixed}
        )
    except ValueError as err:
        raise ConfigError(f"search.fix: {err}") from err
    for i, point in enumerate(config.search.points):
        try:
            search_pkg.validate_point(config.space, point)
        except SpaceError as err:
            raise ConfigError(f"search.points.{i}: {err}") from err
    if not config.name or "/" in config.name:
        raise ConfigError(f"search.name = {config.name!r} must be a plain folder name")
    return config


def build_space(method: MethodConfig, search: SearchConfig) -> dict[str, Dimension]:
    """The study's space from the solver's declared ranges: ``search.fields`` (default: every
    numeric field) plus the fixed and narrowed ones, in declaration order."""
    import solvers

    config_class = solvers.solver_class(method.solver).config_class
    declared = config_class.search_space()
    numeric = [name for name, spec in declared.items() if not isinstance(spec, tuple)]
    where = {"fields": search.fields or [], "fix": search.fix, "narrow": search.narrow}
    for key, names in where.items():
        unknown = sorted(set(names) - set(declared))
        if unknown:
            raise ConfigError(
                f"search.{key}: unknown field(s) {', '.join(unknown)}; {config_class.__name__} "
                f"declares: {', '.join(declared)}"
            )
    chosen = set(numeric if search.fields is None else search.fields)
    chosen |= set(search.fix) | set(search.narrow)
    integers = {
        f.name
        for f in dataclasses.fields(config_class)
        if f.name in chosen and type(f.default) is int and f.name in numeric
    }
    ranges = {name: spec for name, spec in declared.items() if name in chosen}
    try:
        space = space_from_ranges(ranges, search.fix, search.narrow, integers)
        return check_space(space)
    except SpaceError as err:
        raise ConfigError(f"search: {err}") from err


def method_values(method: MethodConfig) -> dict[str, Any]:
    """Every field of the method's solver config (defaults, preset, overrides)."""
    import solvers

    solver = solvers.build(method.solver, method.preset, **method.overrides)
    return dataclasses.asdict(solver.config)


def _pick(items: Sequence[Any], name: str | None, what: str) -> Any:
    """The named task or method, or the only one."""
    names = [item.name for item in items]
    if name is None:
        if len(items) != 1:
            raise ConfigError(
                f"a study tunes one {what}; the config has {len(items)} ({', '.join(names)}): "
                f"choose one with search.{what}=NAME"
            )
        return items[0]
    if name not in names:
        raise ConfigError(f"search.{what} = {name!r}; the config's {what}s: {', '.join(names)}")
    return items[names.index(name)]


def _image_count(experiment: ExperimentConfig) -> int:
    """How many images a trial scores (the configured count, capped by the split)."""
    from experiments.runner import load_dataset

    return len(load_dataset(experiment).names)


# ---------------------------------------------------------------- field checks


def _typed(value: Any, types: type | tuple[type, ...], where: str) -> Any:
    """``value`` if it has one of ``types`` (bools are not numbers)."""
    allowed = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(f"{where} = {value!r} has the wrong type")
    if not isinstance(value, allowed):
        names = " or ".join(t.__name__ for t in allowed)
        raise ConfigError(f"{where} must be {names}, got {value!r}")
    return value


def _integer(value: Any, where: str, low: int | None = None) -> int:
    value = _typed(value, int, where)
    if low is not None and value < low:
        raise ConfigError(f"{where} = {value} must be >= {low}")
    return value


def _number(value: Any, where: str, low: float | None = None) -> float:
    """A number; numeric strings count (YAML 1.1 reads ``1e-5`` as a string)."""
    value = _numeric(value)
    value = float(_typed(value, (int, float), where))
    if low is not None and value < low:
        raise ConfigError(f"{where} = {value:g} must be >= {low:g}")
    return value


def _numeric(value: Any) -> Any:
    """Numeric strings as floats, recursively in lists; anything else unchanged."""
    if isinstance(value, list):
        return [_numeric(v) for v in value]
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _optional(check: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    return lambda value, where: None if value is None else check(value, where)


def _choice(options: Sequence[str]) -> Callable[[Any, str], str]:
    def check(value: Any, where: str) -> str:
        if value not in options:
            raise ConfigError(f"{where} = {value!r}; allowed: {', '.join(options)}")
        return value

    return check


def _names(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of field names, got {value!r}")
    return list(value)


def _edits(value: Any, where: str) -> dict[str, Any]:
    """``fix`` or ``narrow``: field -> value or [low, high] (numeric strings read as numbers)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must map field names to values, got {value!r}")
    edits = {str(k): _numeric(v) for k, v in value.items()}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in edits.items()}


def _point_list(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(p, Mapping) for p in value):
        raise ConfigError(f"{where} must be a list of mappings field -> value, got {value!r}")
    return [{str(k): _numeric(v) for k, v in p.items()} for p in value]


def _asha(value: Any, where: str) -> dict[str, int] | None:
    """ASHA settings; true or {} for the defaults, null or false for no early stopping."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    check_fields(value, ASHA_KEYS, where)
    lows = {"max_t": 1, "grace_period": 1, "reduction_factor": 2}
    return {k: _integer(v, f"{where}.{k}", lows[k]) for k, v in value.items()}


_SEARCH_FIELDS: dict[str, Callable[[Any, str], Any]] = {
    "metric": _choice(tuple(METRIC_MODES)),
    "num_samples": lambda v, w: _integer(v, w, 1),
    "sampler": _choice(SAMPLERS),
    "seed": _integer,
    "asha": _asha,
    "max_concurrent": lambda v, w: _integer(v, w, 1),
    "task": _optional(lambda v, w: _typed(v, str, w)),
    "method": _optional(lambda v, w: _typed(v, str, w)),
    "fields": _optional(_names),
    "fix": _edits,
    "narrow": _edits,
    "points": _point_list,
    "start_from_method": lambda v, w: _typed(v, bool, w),
    "name": _optional(lambda v, w: _typed(v, str, w)),
    "storage_dir": _optional(lambda v, w: _typed(v, str, w)),
    "resume": lambda v, w: _typed(v, bool, w),
    "cpus_per_trial": lambda v, w: _number(v, w, 0.0),
    "gpus_per_trial": _optional(lambda v, w: _number(v, w, 0.0)),
}


def _gmm_problems(raw: Any) -> GMMConfig:
    gmm = build_section(GMMConfig, raw, "gmm")
    for name in raw:
        if name != "latent":  # every count and size is at least 1
            _integer(getattr(gmm, name), f"gmm.{name}", 1)
    if gmm.d_y > gmm.d:
        raise ConfigError(f"gmm.d_y = {gmm.d_y} must not exceed gmm.d = {gmm.d}")
    if gmm.first_instance < GMM_FIRST_TUNING_INSTANCE:
        raise ConfigError(
            f"gmm.first_instance = {gmm.first_instance}: instances below "
            f"{GMM_FIRST_TUNING_INSTANCE} are held out for testing; tune on instances from "
            f"{GMM_FIRST_TUNING_INSTANCE} up"
        )
    return gmm


def _method(raw: Any, index: int) -> MethodConfig:
    """One method of a GMM config: a solver with a preset and overrides (no ensemble)."""
    where = f"methods.{index}"
    check_fields(raw, ("name", "solver", "preset", "overrides"), where)
    method = MethodConfig.from_config(raw, where)
    try:
        method.spec.check()
    except ValueError as err:
        raise ConfigError(f"methods.{method.name}: {err}") from err
    return method


def _tracking(raw: Any) -> TrackingConfig:
    check_fields(raw, [f.name for f in dataclasses.fields(TrackingConfig)], "tracking")
    return build_section(TrackingConfig, {"experiment": "dipswarm-tune", **raw}, "tracking")


# ---------------------------------------------------------------- objectives


class RunningMeans:
    """Running means of the finite numbers seen per key."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: Mapping[str, float]) -> dict[str, float]:
        """Add one image's (or instance's) values; the means so far."""
        for key, value in values.items():
            if math.isfinite(value):
                self.sums[key] = self.sums.get(key, 0.0) + value
                self.counts[key] = self.counts.get(key, 0) + 1
        return self.means()

    def means(self) -> dict[str, float]:
        """The mean of each key so far."""
        return {key: self.sums[key] / self.counts[key] for key in self.sums}


def report_running_means(
    scores: Iterator[Mapping[str, float]], report: search.Report
) -> dict[str, float]:
    """Report the running means after each item (step = items done); the final means."""
    means = RunningMeans()
    current: dict[str, float] = {}
    for step, values in enumerate(scores, start=1):
        current = means.add(values)
        report({**current, "step": step})
    return current


def score_images(
    experiment: ExperimentConfig, params: Mapping[str, Any] | None = None
) -> Iterator[dict[str, float]]:
    """Scores of the first task and method of ``experiment`` per image, with ``params`` on top
    of the method's overrides; measurements and seeds are those of ``dipswarm run``."""
    import ensemble
    from experiments.runner import build_operator, image_metrics, load_dataset, sample_image

    task, method = experiment.tasks[0], experiment.methods[0]
    method = dataclasses.replace(method, spec=method.spec.with_overrides(params or {}))
    data = load_dataset(experiment)
    operator = build_operator(task, tuple(data.images.shape[1:])).to(experiment.device)
    try:
        for index in range(len(data.names)):
            began = time.perf_counter()
            truth, y, _, result = sample_image(experiment, task, method, operator, data, index)
            scores = image_metrics(experiment, operator, truth, y, result)
            numbers = {k: float(v) for k, v in scores.items() if isinstance(v, int | float)}
            yield {**numbers, "nfe": float(result.nfe), "seconds": time.perf_counter() - began}
    finally:
        ensemble.release_workers()


@dataclass(frozen=True)
class ImageObjective:
    """Mean of an image metric over the validation images; the running mean is reported after
    each image (step = images done) so that ASHA can stop poor trials after a few images."""

    experiment: ExperimentConfig
    metric: str

    def __call__(self, params: dict[str, Any], report: search.Report) -> dict[str, float]:
        return report_running_means(score_images(self.experiment, params), report)


def score_gmm(
    method: MethodConfig,
    gmm: GMMConfig,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    instances: Sequence[int] | None = None,
) -> Iterator[dict[str, float]]:
    """Per MCGdiff instance: sliced Wasserstein of ``gmm.particles`` solver samples to
    ``gmm.reference_samples`` exact posterior samples, the perfect-sampler floor (as many
    exact samples, same directions) and their ratio. ``instances`` defaults to the config's
    tuning instances."""
    import torch

    import solvers
    from experiments.metrics import sliced_wasserstein
    from solvers.base import particle_seed
    from solvers.priors.gmm import mcgdiff_problem

    overrides = {**method.overrides, **(params or {})}
    solver = solvers.build(method.solver, method.preset, **overrides)
    for instance in gmm.instance_seeds() if instances is None else instances:
        problem = mcgdiff_problem(gmm.d, gmm.d_y, instance, latent=gmm.latent)
        began = time.perf_counter()
        result = solver.sample(
            problem.prior, problem.operator, problem.y, n=gmm.particles,
            seed=particle_seed(seed, instance),
        )  # fmt: skip
        seconds = time.perf_counter() - began
        posterior = problem.posterior
        if gmm.latent:
            posterior = posterior.pushforward(problem.prior.decoder, problem.prior.bias)
        reference = posterior.sample(
            gmm.reference_samples, particle_seed(seed ^ _REFERENCE_SALT, instance)
        )
        exact = posterior.sample(gmm.particles, particle_seed(seed ^ _FLOOR_SALT, instance))
        directions = particle_seed(seed ^ _SLICE_SALT, instance)
        sw, floor = (
            sliced_wasserstein(
                samples, reference, gmm.slices, torch.Generator().manual_seed(directions)
            )
            for samples in (result.samples, exact)
        )
        yield {
            GMM_METRIC: sw,
            "sw_floor": floor,
            "sw_over_floor": sw / floor,
            "nfe": float(result.nfe),
            "seconds": seconds,
        }


@dataclass(frozen=True)
class GMMObjective:
    """Mean sliced Wasserstein to the exact posterior over the tuning instances; the running
    mean is reported after each instance (step = instances done)."""

    method: MethodConfig
    gmm: GMMConfig
    seed: int = 0

    def __call__(self, params: dict[str, Any], report: search.Report) -> dict[str, float]:
        return report_running_means(score_gmm(self.method, self.gmm, params, self.seed), report)


# ---------------------------------------------------------------- running a study


@dataclass
class StudyOutcome:
    """A finished (or interrupted) study and the files written after it."""

    config: TuneConfig
    result: search.StudyResult
    preset: Path | None
    trials: Path

    def summary(self) -> str:
        """What to tell the user: the best config, the files, and how to browse the study."""
        import search as search_pkg
        from experiments.tracking import Tracker

        result, config = self.result, self.config
        counts = result.trials["status"].value_counts().to_dict() if len(result.trials) else {}
        done = ", ".join(f"{counts[s]} {s}" for s in sorted(counts))
        lines = [
            f"study {result.study_name}: {len(result.trials)} of {config.search.num_samples} "
            f"trials ({done}); compute {result.total_steps} "
            f"{'instances' if config.gmm else 'images'}"
            + ("; INTERRUPTED (resume with --resume)" if result.interrupted else ""),
        ]
        if result.best_config is not None:
            lines.append(f"best {result.metric} = {result.best_value:.6g} (trial "
                         f"{result.best_trial_id}):")  # fmt: skip
            lines += [f"  {k}: {v!r}" for k, v in result.best_config.items()]
        else:
            lines.append("no completed trial: no best config")
        lines.append(f"trials:    {self.trials}")
        if self.preset is not None:
            run = f"dipswarm run {self.preset}" if config.experiment else "solvers.build(...)"
            lines.append(f"preset:    {self.preset}  (use: {run})")
        lines.append(f"report:    dipswarm report --study {result.experiment_path}")
        if result.mlflow_uri:
            tracker = Tracker(result.mlflow_uri, config.tracking.experiment, config.output)
            lines.append(f"mlflow:    {tracker.ui_command()}")
        lines.append(f"optuna:    {search_pkg.optuna_dashboard_command(result)}")
        return "\n".join(lines)


def run_study(
    config: TuneConfig,
    progress: bool = True,
    stream: TextIO | None = None,
    objective: search.Objective | None = None,
) -> StudyOutcome:
    """Run (or resume) the study, then write ``trials.csv`` and the best preset into its
    folder and log the preset to the study's MLflow run. ``objective`` replaces the config's
    own (benchmarks wrap it); progress lines go to ``stream`` (default stdout)."""
    import search as search_pkg

    _start_ray(config)
    uri = _tracking_uri(config)
    watcher = (
        StudyProgress(config.study_dir, config.search.metric, config.search.mode,
                      config.search.num_samples, stream=stream)
        if progress else nullcontext()
    )  # fmt: skip
    with watcher:
        try:
            result = search_pkg.tune(
                objective or config.objective(),
                config.space,
                config.search.metric,
                config.search.mode,
                config.search.num_samples,
                name=config.name,
                storage_dir=config.storage_dir,
                sampler=config.search.sampler,
                seed=config.search.seed,
                asha=config.asha(),
                max_concurrent=config.search.max_concurrent,
                resources=config.resources(),
                points_to_evaluate=config.points(),
                mlflow_uri=uri,
                mlflow_experiment=config.tracking.experiment,
                resume=config.search.resume,
            )
        except FileExistsError as err:
            raise ConfigError(
                f"{err} (command line: --resume, or search.name=ANOTHER_NAME)"
            ) from None
    trials = result.experiment_path / TRIALS_FILE
    result.trials.to_csv(trials, index=False)
    preset = write_preset(config, result) if result.best_config is not None else None
    if preset is not None and result.mlflow_parent_run_id:
        from search.tracking import client

        client(result.mlflow_uri).log_artifact(result.mlflow_parent_run_id, str(preset))
    return StudyOutcome(config, result, preset, trials)


def best_document(config: TuneConfig, best: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The best config as a preset: for image studies the experiment config with the method's
    overrides updated, on the test split, writing to ``folder/best-run``; for GMM studies
    ``solver``, ``preset`` and ``overrides``."""
    overrides = {**config.method.overrides, **{k: _plain(v) for k, v in best.items()}}
    if config.experiment is None:
        return {"solver": config.method.solver, "preset": config.method.preset,
                "overrides": overrides}  # fmt: skip
    document = config.experiment.to_dict()
    document["name"] = f"{config.name}-best"
    document["data"]["split"] = "test"
    document["methods"][0]["overrides"] = overrides
    document["output"] = str(folder / "best-run")
    return document


def write_preset(config: TuneConfig, result: search.StudyResult) -> Path:
    """Write ``best.yaml`` into the study folder (see ``best_document``)."""
    assert result.best_config is not None and result.best_value is not None
    folder = result.experiment_path
    document = best_document(config, result.best_config, folder)
    path = folder / PRESET_FILE
    if config.experiment is not None:
        use = f"# run it on the test split: dipswarm run {path} [data.images=N]\n"
    else:
        use = "# use: solvers.build(solver, preset, **overrides)\n"
    header = (
        f"# best config of study {result.study_name}: {result.metric} = "
        f"{result.best_value:.6g} ({result.mode}) on the tuning data, trial "
        f"{result.best_trial_id}\n{use}"
    )
    path.write_text(header + yaml.safe_dump(document, sort_keys=False))
    return path


def _plain(value: Any) -> Any:
    """Numpy or torch scalars as Python numbers (for YAML)."""
    return value.item() if hasattr(value, "item") else value


def _tracking_uri(config: TuneConfig) -> str | None:
    """The study's MLflow store (absolute; a new SQLite store is seeded from the cached empty
    one, which saves MLflow's migrations), or None when tracking is off."""
    if not config.tracking.enabled:
        return None
    from experiments.tracking import SQLITE_PREFIX, _seed_sqlite, resolve_tracking_uri

    uri = resolve_tracking_uri(config.tracking.uri, config.output)
    if uri.startswith(SQLITE_PREFIX):
        database = Path(uri[len(SQLITE_PREFIX) :].partition("?")[0])
        if not database.exists():
            database.parent.mkdir(parents=True, exist_ok=True)
            _seed_sqlite(database, config.storage_dir / "mlartifacts")
    return uri


def _start_ray(config: TuneConfig) -> None:
    """Connect to the configured Ray cluster, or start a local one, unless Ray runs already."""
    import os

    import ray

    if ray.is_initialized():
        return
    address = None
    if config.experiment is not None:
        address = config.experiment.method_ensemble(config.method).address
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=address, include_dashboard=False, log_to_driver=False)


class StudyProgress:
    """Prints the study's progress (trials finished, best value so far) while it runs.

    A thread polls the study's Optuna journal every ``interval`` seconds and prints a line when
    something changed: ``search.tune`` takes no Tune callbacks, and its journal is the record
    that every finished trial reaches.
    """

    def __init__(
        self,
        study_dir: Path,
        metric: str,
        mode: str,
        total: int,
        interval: float = 2.0,
        stream: TextIO | None = None,
    ) -> None:
        self.study_dir, self.metric, self.mode, self.total = study_dir, metric, mode, total
        self.interval = interval
        self.stream = stream
        self._last: tuple | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> StudyProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        """Print a progress line if the study's state changed since the last one."""
        try:
            state = self.state()
        except Exception:  # a journal being written; the next poll reads it whole
            return
        if state is None or state == self._last:
            return
        self._last = state
        print(self.describe(state), file=self.stream or sys.stdout, flush=True)

    def state(self) -> tuple | None:
        """(running, completed, stopped, failed, best value, best trial number) or None before
        the study is recorded."""
        meta_file = self.study_dir / "search_study.json"
        if not meta_file.is_file():
            return None
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        meta = json.loads(meta_file.read_text())
        storage = JournalStorage(JournalFileBackend(meta["optuna_journal"]))
        trials = optuna.load_study(study_name=meta["study_name"], storage=storage).get_trials(
            deepcopy=False
        )
        states = optuna.trial.TrialState
        count = {s: sum(t.state == s for t in trials) for s in states}
        complete = [t for t in trials if t.state == states.COMPLETE and t.value is not None]
        pick = max if self.mode == "max" else min
        best = pick(complete, key=lambda t: t.value) if complete else None
        return (
            count[states.RUNNING],
            count[states.COMPLETE],
            count[states.PRUNED],
            count[states.FAIL],
            None if best is None else best.value,
            None if best is None else best.number,
        )

    def describe(self, state: tuple) -> str:
        running, completed, stopped, failed, value, number = state
        finished = completed + stopped + failed
        best = "none yet" if value is None else f"{value:.5g} (trial #{number})"
        return (
            f"[tune] {finished}/{self.total} trials finished ({completed} completed, "
            f"{stopped} stopped early, {failed} failed; {running} running); best "
            f"{self.metric}: {best}"
        )
