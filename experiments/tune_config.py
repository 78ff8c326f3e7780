"""Tune configs of ``dipswarm tune``: the schema, loading and checks (docs/search.md).

A tune config is either

- an experiment config (experiments/config.py) with one task and one method (or ``search.task``
  and ``search.method`` naming them) on the validation split (``data.split: val``; the test
  split is refused), plus a ``search:`` section; the objective is the mean of an image metric
  (PSNR, SSIM, LPIPS or the measurement loss) over the validation images; or
- a Gaussian-mixture config (``GMMStudyConfig``): ``name``, ``gmm`` (problem size, instances,
  particles), ``methods``, ``tracking``, ``output``, ``seed`` and ``search``; the objective is
  the mean sliced Wasserstein distance to the exact posterior over MCGdiff instances numbered
  from ``GMM_FIRST_TUNING_INSTANCE`` up (lower numbers are held out for testing).

The ``search`` section (``SearchConfig``) names the metric (the mode follows from it), the
budget, the sampler, ASHA, and the space: by default every numeric field the solver declares
(``solvers.config``: range, log scale), restricted with ``fields``, with ``fix`` and ``narrow``
edits. Dotted command-line overrides reach both parts (``search.num_samples=8``,
``search.narrow.lr=[1.0e-5,1.0e-3]``, ``methods.daps.overrides.mcmc_steps=10``). Every section
is a typed dataclass read by ``config.build_section`` (one reader, one unknown-field message);
the checks each section makes on its values live in its ``__post_init__``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from experiments.objectives import GMM_METRIC, IMAGE_METRICS, GMMObjective, ImageObjective
from search.space import Dimension, Fixed, SpaceError, check_space, space_from_ranges

METRIC_MODES = {
    "psnr": "max",
    "ssim": "max",
    "lpips": "min",
    "measurement_loss": "min",
    GMM_METRIC: "min",
}
TUNING_SPLIT = "val"
SAMPLERS = ("tpe", "gp", "cmaes", "random")
# MCGdiff instances 0 .. 9999 are held out for testing (experiments/benchmarks/gmm.py numbers
# its instances from 0, 1000 per --seed); GMM studies tune on instances from here up.
GMM_FIRST_TUNING_INSTANCE = 10_000
STUDIES = "dipswarm-tune"  # the MLflow experiment of GMM studies unless tracking names one


def _at_least(where: str, value: float | None, low: float) -> None:
    if value is not None and value < low:
        raise ConfigError(f"{where} = {value:g} must be >= {low:g}")


def _one_of(where: str, value: str, options: Sequence[str]) -> None:
    if value not in options:
        raise ConfigError(f"{where} = {value!r}; allowed: {', '.join(options)}")


def _numeric(value: Any) -> Any:
    """Numeric strings as floats (YAML 1.1 reads ``1e-5`` as a string), lists as tuples of
    those; anything else unchanged."""
    if isinstance(value, list | tuple):
        return tuple(_numeric(v) for v in value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


@dataclass
class ASHAConfig:
    """ASHA early stopping; unset fields take ``search.tune``'s defaults, ``max_t`` the images
    or instances of a trial. In YAML a mapping of these fields, ``true`` for the defaults, and
    ``null`` or ``false`` (``search.asha`` is then None) for no early stopping."""

    max_t: int | None = None
    grace_period: int | None = None
    reduction_factor: int | None = None

    def __post_init__(self) -> None:
        _at_least("search.asha.max_t", self.max_t, 1)
        _at_least("search.asha.grace_period", self.grace_period, 1)
        _at_least("search.asha.reduction_factor", self.reduction_factor, 2)

    @classmethod
    def from_config(cls, raw: Any, where: str) -> ASHAConfig | None:
        """The section from YAML (a null never reaches here: the field is optional)."""
        if isinstance(raw, bool):
            return cls() if raw else None
        raw = check_fields(raw, [f.name for f in dataclasses.fields(cls)], where)
        for key, value in raw.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}.{key} must be an integer, got {value!r}")
        return cls(**raw)

    def to_config(self) -> dict[str, int]:
        """The fields given, as ``search.tune`` takes them."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class SearchConfig:
    """The ``search:`` section of a tune config."""

    metric: str = "psnr"
    num_samples: int = 8
    sampler: str = "tpe"
    seed: int = 0
    asha: ASHAConfig | None = field(default_factory=ASHAConfig)  # None: no early stopping
    max_concurrent: int = 1
    task: str | None = None  # which task of the config (needed when it lists several)
    method: str | None = None  # which method of the config (needed when it lists several)
    fields: list[str] | None = None  # fields to search (default: every numeric field)
    fix: dict[str, Any] = field(default_factory=dict)  # field -> value
    narrow: dict[str, Any] = field(default_factory=dict)  # field -> [low, high] or choices
    points: list[dict[str, Any]] = field(default_factory=list)  # configs tried first
    start_from_method: bool = True  # try the method's own values first
    name: str | None = None  # the study's name (default: the config's name)
    storage_dir: str | None = None  # where studies live (default: the config's output)
    resume: bool = False
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None  # default: 1 for a CUDA device with a local ensemble

    def __post_init__(self) -> None:
        _one_of("search.metric", self.metric, tuple(METRIC_MODES))
        _one_of("search.sampler", self.sampler, SAMPLERS)
        _at_least("search.num_samples", self.num_samples, 1)
        _at_least("search.max_concurrent", self.max_concurrent, 1)
        _at_least("search.cpus_per_trial", self.cpus_per_trial, 0.0)
        _at_least("search.gpus_per_trial", self.gpus_per_trial, 0.0)
        self.fix = {str(k): _numeric(v) for k, v in self.fix.items()}
        self.narrow = {str(k): _numeric(v) for k, v in self.narrow.items()}
        self.points = [
            {str(k): v if isinstance(v, list) else _numeric(v) for k, v in point.items()}
            for point in self.points
        ]

    @property
    def mode(self) -> str:
        """The mode ("max" or "min") that the metric implies."""
        return METRIC_MODES[self.metric]


@dataclass
class GMMConfig:
    """The Gaussian-mixture problems of a GMM study (docs/gmm_benchmark.md)."""

    d: int = 8
    d_y: int = 2
    instances: int = 4
    first_instance: int = GMM_FIRST_TUNING_INSTANCE
    particles: int = 500
    reference_samples: int = 1000
    slices: int = 100
    latent: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "latent":  # every count and size is at least 1
                _at_least(f"gmm.{f.name}", getattr(self, f.name), 1)
        if self.d_y > self.d:
            raise ConfigError(f"gmm.d_y = {self.d_y} must not exceed gmm.d = {self.d}")
        if self.first_instance < GMM_FIRST_TUNING_INSTANCE:
            raise ConfigError(
                f"gmm.first_instance = {self.first_instance}: instances below "
                f"{GMM_FIRST_TUNING_INSTANCE} are held out for testing; tune on instances from "
                f"{GMM_FIRST_TUNING_INSTANCE} up"
            )

    def instance_seeds(self) -> list[int]:
        """The MCGdiff instance numbers a trial runs, in order."""
        return list(range(self.first_instance, self.first_instance + self.instances))


@dataclass
class GMMStudyConfig:
    """A Gaussian-mixture tune config without its ``search`` section."""

    name: str = "tune_gmm"
    gmm: GMMConfig = field(default_factory=GMMConfig)
    methods: list[MethodConfig] = field(default_factory=list)
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment=STUDIES))
    output: str = "dipswarm-tune"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("methods must list at least one method (name, solver, preset)")
        for method in self.methods:
            if method.ensemble:
                raise ConfigError(f"methods.{method.name}.ensemble: GMM studies run no ensemble")
            try:
                method.spec.check()
            except ValueError as err:
                raise ConfigError(f"methods.{method.name}: {err}") from err


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
        from experiments.runner import load_dataset

        return len(load_dataset(self.experiment).names)

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
        return {"max_t": self.steps, **self.search.asha.to_config()}

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
    search = build_section(SearchConfig, raw.pop("search", None) or {}, "search")
    if "gmm" in raw:
        return _gmm_config(raw, search)
    return _image_config(raw, search)


def _image_config(raw: dict[str, Any], search: SearchConfig) -> TuneConfig:
    """An image study: an experiment config reduced to one task and one method."""
    experiment = load_config(None, [], base=raw)
    task = _pick(experiment.tasks, search.task, "task")
    method = _pick(experiment.methods, search.method, "method")
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
    output = Path(experiment.output).expanduser().resolve()
    experiment = dataclasses.replace(experiment, tasks=[task], methods=[method], output=str(output))
    return _study(
        search,
        method,
        experiment.name,
        output=output,
        tracking=experiment.tracking,
        seed=experiment.seed,
        experiment=experiment,
    )


def _gmm_config(raw: dict[str, Any], search: SearchConfig) -> TuneConfig:
    """A Gaussian-mixture study."""
    tracking = raw.get("tracking") or {}
    if isinstance(tracking, Mapping):  # the studies' experiment unless the config names one
        raw["tracking"] = {"experiment": STUDIES, **tracking}
    study = build_section(GMMStudyConfig, raw, "")
    method = _pick(study.methods, search.method, "method")
    if search.metric != GMM_METRIC:
        raise ConfigError(f"search.metric = {search.metric!r}; GMM studies use {GMM_METRIC!r}")
    return _study(
        search,
        method,
        study.name,
        output=Path(study.output).expanduser().resolve(),
        tracking=study.tracking,
        seed=study.seed,
        gmm=study.gmm,
    )


def _study(search: SearchConfig, method: MethodConfig, name: str, **where: Any) -> TuneConfig:
    """The study of ``method`` under ``search`` (named ``search.name``, else ``name``), with the
    ``TuneConfig`` fields ``where`` (output, tracking, seed, the problem), after checking its
    fixed values and start points against the solver."""
    import search as search_pkg

    space = build_space(method, search)
    config = TuneConfig(
        name=search.name or name, search=search, method=method, space=space, **where
    )
    fixed = {k: d.value for k, d in config.space.items() if isinstance(d, Fixed)}
    try:
        config.method.spec.with_overrides(fixed).build()
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
    return dataclasses.asdict(method.spec.build().config)


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
