"""ExperimentConfig: a typed, validated description of a dataset x tasks x methods run.

Loaded from YAML with dotted command-line overrides (``ensemble.particles=8``,
``methods.daps.overrides.mcmc_steps=50``: list items are addressed by their ``name`` or their
position). Everything is checked before any work starts; a bad field raises ``ConfigError``
naming the field, the value and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import types
import typing
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import operators
import solvers
from ensemble.settings import EnsembleSettings
from solvers import SolverSpec


class ConfigError(ValueError):
    """An experiment config that cannot run; the message names the field and the fix."""


@dataclass
class DataConfig:
    """Ground-truth images: a built-in dataset split, or a folder of images."""

    dataset: str = "digits"  # built-in name (digits, faces, photos) or "folder"
    folder: str | None = None
    split: str = "test"
    images: int = 4  # the first ``images`` images of the split (0: all)
    size: int | None = None
    channels: int | None = None


@dataclass
class TaskConfig:
    """One forward operator: a registered operator name and its build parameters.

    ``per_image_operator``: draw the operator's random parts (mask, kernel) anew for each image,
    from its ``seed`` parameter and the image index, instead of sharing one draw.
    """

    name: str
    operator: str
    params: dict[str, Any] = field(default_factory=dict)
    sigma: float = 0.05
    per_image_operator: bool = False


@dataclass
class MethodConfig:
    """One solver setting under a name; ``ensemble`` changes fields of the experiment's ensemble
    section for this method (a nested section such as ``repulsion`` is replaced whole).

    In YAML the solver's fields sit flat in the method: ``{name, solver, preset, overrides,
    ensemble}``; ``preset`` may contain ``{task}``, replaced by each task's operator name
    (``pixel_hmc/{task}`` -> ``pixel_hmc/super_resolution``).
    """

    name: str
    spec: SolverSpec
    ensemble: dict[str, Any] = field(default_factory=dict)

    FIELDS: typing.ClassVar[tuple[str, ...]] = ("name", "solver", "preset", "overrides", "ensemble")

    @classmethod
    def from_config(cls, raw: Any, where: str) -> MethodConfig:
        """The method from its YAML mapping; a bad solver name or field names ``where``."""
        raw = check_fields(raw, cls.FIELDS, where)
        for required in ("name", "solver"):
            if required not in raw:
                raise ConfigError(f"{where}.{required} is missing; a method needs name and solver")
        name = _convert(str, raw["name"], f"{where}.name")
        solver = _convert(str, raw["solver"], f"{where}.solver")
        preset = _convert(str | None, raw.get("preset"), f"{where}.preset")
        overrides = _convert(dict[str, Any], raw.get("overrides") or {}, f"{where}.overrides")
        ensemble = _convert(dict[str, Any], raw.get("ensemble") or {}, f"{where}.ensemble")
        if solver not in solvers.available():
            raise ConfigError(
                f"methods.{name}.solver = {solver!r}; allowed: {', '.join(solvers.available())}"
            )
        return cls(name, SolverSpec(solver, preset, overrides), ensemble)

    def to_config(self) -> dict[str, Any]:
        """The YAML mapping ``from_config`` reads back."""
        return {
            "name": self.name,
            "solver": self.spec.name,
            "preset": self.spec.preset,
            "overrides": plain(self.spec.overrides),
            "ensemble": plain(self.ensemble),
        }

    @property
    def solver(self) -> str:
        return self.spec.name

    @property
    def preset(self) -> str | None:
        return self.spec.preset

    @property
    def overrides(self) -> dict[str, Any]:
        return dict(self.spec.overrides)

    def spec_for(self, task: TaskConfig) -> SolverSpec:
        """The solver spec for one task (``{task}`` in the preset filled in)."""
        return self.spec.for_task(task.operator)

    def preset_for(self, task: TaskConfig) -> str | None:
        return self.spec_for(task).preset


@dataclass
class MetricsConfig:
    """LPIPS settings (PSNR, SSIM, measurement loss, diversity and std are always computed),
    and the set-level FID and KID of the run's report: ``fid`` turns them on (off by default:
    they need the Inception weights), ``fid_weights`` is the weights file (None: the torch hub
    cache, ``experiments.metrics.fid_weights_file``), ``fid_random_backbone`` the same network
    on random weights, for tests (numbers labelled not comparable)."""

    lpips: bool = True
    lpips_net: str = "vgg"
    lpips_random_backbone: bool = False
    fid: bool = False
    fid_weights: str | None = None
    fid_random_backbone: bool = False

    def __post_init__(self) -> None:
        if self.fid_weights is not None and self.fid_random_backbone:
            raise ConfigError(
                "metrics.fid_weights and metrics.fid_random_backbone exclude each other: "
                "set the weights file for real FID, or the random backbone for tests"
            )
        if self.fid_weights is not None and not self.fid_weights.strip():
            raise ConfigError("metrics.fid_weights is empty; give a file or null (hub cache)")


@dataclass
class TrackingConfig:
    """MLflow: SQLite under the output folder unless ``uri`` names another store or server."""

    enabled: bool = True
    uri: str | None = None
    experiment: str = "dipswarm"


DEFAULT_BATCH_ROWS = {"cpu": 16, "cuda": 64}


@dataclass
class ExecutionConfig:
    """How the runner groups the images of one (task, method) into ensemble runs.

    ``images_per_batch``: images solved together in one ensemble run (rows = images x
    particles), or ``"auto"``: as many as fit ``max_batch_rows``. ``max_batch_rows``: None
    takes the device's default (16 on CPU, where batching saves per-call overhead; 64 on CUDA,
    where a denoiser call costs about the same for 1 row as for tens). ``memory_limit_mb``: a
    ceiling on the driver's resident memory while a local-backend batch runs; a batch that
    crosses it (or a CUDA out-of-memory error) is split in two and retried.

    ``max_concurrent_jobs``: 1 runs the batches one after another in this process; N or
    ``"auto"`` (as many as the Ray cluster's resources fit) runs them as concurrent jobs of an
    ``ensemble.JobPool`` over the cluster at ``ensemble.address``, each job taking
    ``cpus_per_job`` CPUs and ``gpus_per_job`` GPUs (docs/cluster.md).
    """

    images_per_batch: int | str = "auto"
    max_batch_rows: int | None = None
    memory_limit_mb: float | None = None
    max_concurrent_jobs: int | str = 1
    cpus_per_job: float = 1.0
    gpus_per_job: float = 0.0

    def __post_init__(self) -> None:
        if self.images_per_batch != "auto" and not (
            isinstance(self.images_per_batch, int) and self.images_per_batch >= 1
        ):
            raise ConfigError(
                f"execution.images_per_batch = {self.images_per_batch!r}; use a positive "
                "integer or 'auto'"
            )
        if self.max_batch_rows is not None and self.max_batch_rows < 1:
            raise ConfigError(f"execution.max_batch_rows = {self.max_batch_rows} must be >= 1")
        if self.memory_limit_mb is not None and not self.memory_limit_mb > 0:
            raise ConfigError(f"execution.memory_limit_mb = {self.memory_limit_mb} must be > 0")
        if self.max_concurrent_jobs != "auto" and not (
            isinstance(self.max_concurrent_jobs, int) and self.max_concurrent_jobs >= 1
        ):
            raise ConfigError(
                f"execution.max_concurrent_jobs = {self.max_concurrent_jobs!r}; use a positive "
                "integer or 'auto'"
            )
        for name in ("cpus_per_job", "gpus_per_job"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"execution.{name} = {getattr(self, name)} must be >= 0")
        if self.max_concurrent_jobs == "auto" and self.cpus_per_job == self.gpus_per_job == 0:
            raise ConfigError(
                "execution.max_concurrent_jobs = 'auto' needs cpus_per_job or gpus_per_job > 0 "
                "(the cluster's resources say how many jobs fit)"
            )

    def batch_images(self, particles: int, device: str) -> int:
        """Images per ensemble run for ``particles`` particles per image on ``device``."""
        if isinstance(self.images_per_batch, int):
            return self.images_per_batch
        rows = self.max_batch_rows or DEFAULT_BATCH_ROWS["cuda" if device != "cpu" else "cpu"]
        return max(1, rows // particles)


@dataclass
class ExperimentConfig:
    """Everything one ``dipswarm run`` needs."""

    name: str = "experiment"
    prior: Any = "digits"  # a solvers.priors.load spec: a name, a path, or a dict
    data: DataConfig = field(default_factory=DataConfig)
    tasks: list[TaskConfig] = field(default_factory=list)
    methods: list[MethodConfig] = field(default_factory=list)
    ensemble: EnsembleSettings = field(default_factory=EnsembleSettings)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    output: str = "runs/experiment"
    device: str = "cpu"
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, dicts, scalars) that ``from_dict`` reads back."""
        return plain(self)

    def method_ensemble(self, method: MethodConfig) -> EnsembleSettings:
        """The experiment's ensemble settings with the method's own changes applied."""
        merged = {**plain(self.ensemble), **method.ensemble}
        return build_section(EnsembleSettings, merged, f"methods.{method.name}.ensemble")


# -- loading ---------------------------------------------------------------------------------------
def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> ExperimentConfig:
    """The config from a YAML file (or ``base``), with ``key.path=value`` overrides, validated."""
    raw: dict[str, Any] = copy.deepcopy(dict(base or {}))
    if path is not None:
        raw = {**raw, **read_yaml(path)}
    for item in overrides:
        apply_override(raw, item)
    config = from_dict(raw)
    validate(config)
    return config


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping of config fields in a YAML file (an empty file is an empty mapping)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {yaml_problem(err)}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a YAML mapping of config fields")
    return loaded


def yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML parse error on one line, positions 1-based (PyYAML's own message spans lines and
    names the text it parsed ``<unicode string>``, not the file)."""
    if not isinstance(err, yaml.MarkedYAMLError) or err.problem_mark is None:
        return " ".join(str(err).split())
    mark = err.problem_mark
    text = f"line {mark.line + 1}, column {mark.column + 1}: {err.problem}"
    if err.context and err.context_mark is not None:
        start = err.context_mark
        text += f" ({err.context} at line {start.line + 1}, column {start.column + 1})"
    elif err.context:
        text += f" ({err.context})"
    return text


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in nested dicts/lists (list items by ``name`` or index)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like field.path=value")
    key, text = item.split("=", 1)
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        problem = yaml_problem(err)
        raise ConfigError(f"override {item!r}: the value is not valid YAML: {problem}") from None
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        child = _child(node, part, ".".join(parts[: depth + 1]))
        if child is None:
            child = {}
            _set(node, part, child, key)
        node = child
    _set(node, parts[-1], value, key)


def _child(node: Any, part: str, where: str) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list):
        return node[_list_index(node, part, where)]
    raise ConfigError(f"override path {where!r}: cannot descend into {type(node).__name__}")


def _set(node: Any, part: str, value: Any, key: str) -> None:
    if isinstance(node, dict):
        node[part] = value
    elif isinstance(node, list):
        node[_list_index(node, part, key)] = value
    else:
        raise ConfigError(f"override {key!r}: cannot set a field inside {type(node).__name__}")


def _list_index(items: list[Any], part: str, where: str) -> int:
    if part.isdigit() and int(part) < len(items):
        return int(part)
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    names = [str(item.get("name")) for item in items if isinstance(item, dict)]
    raise ConfigError(
        f"override path {where!r}: no list item named or numbered {part!r}; items: {names}"
    )


def from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build the typed config; unknown fields and wrong types raise ``ConfigError``."""
    return build_section(ExperimentConfig, raw, "")


def check_fields(raw: Any, allowed: Sequence[str], where: str) -> Mapping[str, Any]:
    """``raw`` if it is a mapping whose keys are all in ``allowed``; else a ConfigError naming
    the section ``where``, the unknown fields and the allowed ones."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where or 'config'} must be a mapping of fields, got {raw!r}")
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown field(s) {', '.join(_join(where, u) for u in unknown)}; allowed in "
            f"{where or 'the config'}: {', '.join(allowed)}"
        )
    return raw


def build_section(cls: type, raw: Any, where: str) -> Any:
    """The dataclass ``cls`` from a mapping, fields checked and converted by their type hints
    (``where`` is the section's dotted path, for messages). A class with a ``from_config``
    classmethod reads its own mapping; the checks a settings class makes on construction
    (a ``ValueError``) come back as a ``ConfigError`` prefixed with ``where``."""
    if hasattr(cls, "from_config"):
        return cls.from_config(raw, where)
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    raw = check_fields(raw, fields, where)
    values = {name: _convert(hints[name], value, _join(where, name)) for name, value in raw.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(_join(where, str(err))) from err


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build_section(hint, value, where)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(option, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_convert(item, v, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return tuple(_convert(item, v, f"{where}.{i}") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {hint}")  # pragma: no cover


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


# -- meaning -----------------------------------------------------------------------------------
def validate(config: ExperimentConfig) -> None:
    """Semantic checks: names exist, ranges hold, presets and overrides fit their solver."""
    from experiments.data import SPLITS, builtin_datasets

    data = config.data
    if data.dataset == "folder":
        if not data.folder:
            raise ConfigError(
                "data.folder must name a folder of images when data.dataset is 'folder'"
            )
    elif data.dataset not in builtin_datasets():
        raise ConfigError(
            f"data.dataset = {data.dataset!r}; allowed: {', '.join(builtin_datasets())}, folder"
        )
    if data.split not in SPLITS:
        raise ConfigError(f"data.split = {data.split!r}; allowed: {', '.join(SPLITS)}")
    _at_least("data.images", data.images, 0)
    if not config.tasks:
        raise ConfigError("tasks is empty; list at least one task (name, operator, params)")
    if not config.methods:
        raise ConfigError("methods is empty; list at least one method (name, solver, preset)")
    _unique("tasks", [t.name for t in config.tasks])
    _unique("methods", [m.name for m in config.methods])
    for i, task in enumerate(config.tasks):
        if task.operator not in operators.available():
            raise ConfigError(
                f"tasks.{task.name}.operator = {task.operator!r}; allowed: "
                f"{', '.join(operators.available())}"
            )
        _at_least(f"tasks.{i}.sigma", task.sigma, 0.0)
    if not _names_a_path(config.prior):
        _check_prior(config.prior)
    for task in config.tasks:
        try:
            operators.check_params(task.operator, task.params, filled=("shape", "sigma"))
        except ValueError as err:
            raise ConfigError(f"tasks.{task.name}.params: {err}") from err
        if task.per_image_operator and "seed" not in operators.parameters(task.operator):
            random = [n for n in operators.available() if "seed" in operators.parameters(n)]
            raise ConfigError(
                f"tasks.{task.name}.per_image_operator: {task.operator} has no random parts "
                f"(no seed parameter) to draw per image; operators with one: {', '.join(random)}"
            )
    for method in config.methods:
        _validate_method(config, method)
    if config.metrics.lpips_net not in ("alex", "vgg", "squeeze"):
        raise ConfigError(
            f"metrics.lpips_net = {config.metrics.lpips_net!r}; allowed: alex, vgg, squeeze"
        )
    if config.device != "cpu" and not config.device.startswith("cuda"):
        raise ConfigError(f"device = {config.device!r}; allowed: cpu, cuda, cuda:N")


def _validate_method(config: ExperimentConfig, method: MethodConfig) -> None:
    """Every task's preset and the overrides fit the solver; the merged ensemble settings hold,
    and pruning steps fall inside the solver's steps."""
    where = f"methods.{method.name}"
    ensemble = config.method_ensemble(method)
    images = config.execution.batch_images(ensemble.particles, config.device)
    if ensemble.workers > ensemble.particles * images:
        raise ConfigError(
            f"{where}.ensemble.workers = {ensemble.workers} exceeds the rows of a batch "
            f"(particles {ensemble.particles} x execution.images_per_batch {images}); every "
            "worker needs at least one row"
        )
    for task in config.tasks:
        spec = method.spec_for(task)
        table = solvers.presets(spec.name)
        if spec.preset is not None and spec.preset not in table:
            raise ConfigError(
                f"{where}.preset = {method.preset!r} gives {spec.preset!r} for task "
                f"{task.name!r}, which {spec.name} does not have; presets: "
                f"{', '.join(sorted(table))}"
            )
        try:
            solver = spec.build()
        except ValueError as err:
            raise ConfigError(f"{where}.overrides: {err}") from err
        try:
            ensemble.check_solver(solver.num_steps, solver.weighted)
        except ValueError as err:
            raise ConfigError(f"{where}.ensemble.{err}") from err


def _at_least(where: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{where} = {value!r} must be >= {low}")


def _unique(where: str, names: list[str]) -> None:
    seen = {n for n in names if names.count(n) > 1}
    if seen:
        raise ConfigError(f"{where} names must be unique; repeated: {', '.join(sorted(seen))}")


def check_paths(config: ExperimentConfig) -> None:
    """Before a run, on the machine that runs it: folders and files the config names exist
    (``$VARS`` expanded), the prior spec resolves, the output folder can be written, an
    ``http(s)`` tracking server answers, a CUDA device exists if asked for, and FID's Inception
    weights are there (fetched into the hub cache if they can be)."""
    if config.data.dataset == "folder":
        folder = expand(config.data.folder)
        if not Path(folder).is_dir():
            raise ConfigError(
                f"data.folder = {config.data.folder!r} ({folder}) is not a folder of images; set "
                "it (or the environment variables it uses) to your dataset"
            )
    prior = expand(config.prior)
    path = prior.get("path") if isinstance(prior, dict) else prior
    is_path = isinstance(path, str) and "/" in path and not path.startswith("hf:")
    if is_path and not Path(path).exists():
        raise ConfigError(
            f"prior {config.prior!r} names {path}, which does not exist; set the path (or the "
            "environment variables it uses) to your model"
        )
    _check_prior(prior)
    _check_output(config.output)
    if config.tracking.enabled and config.tracking.uri:
        check_tracking_server(config.tracking.uri)
    if config.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"device = {config.device!r}, but this machine has no CUDA device; use "
                "device=cpu or run on a GPU machine"
            )
    if config.metrics.fid and not config.metrics.fid_random_backbone:
        from experiments.metrics import fid_weights_file  # the run's report computes FID

        weights = config.metrics.fid_weights
        try:
            fid_weights_file(None if weights is None else expand(weights))
        except (FileNotFoundError, RuntimeError) as err:
            raise ConfigError(f"metrics.fid = true: {err}") from err


def _check_output(output: str) -> None:
    """The output folder is a folder, or can be made in the nearest existing one."""
    path = Path(output).resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(
            f"output = {output!r}: {existing} is a file, not a folder; choose another output "
            "folder (output=...)"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"output = {output!r}: no permission to write in {existing}; choose another output "
            "folder (output=...)"
        )


TRACKING_TIMEOUT_S = 5.0


def check_tracking_server(uri: str, timeout: float = TRACKING_TIMEOUT_S) -> None:
    """An ``http(s)://`` tracking server answers MLflow's ``/health`` within ``timeout``
    seconds (MLflow's client would retry a refused connection for minutes, then fail with a
    traceback)."""
    if uri.partition(":")[0].lower() not in ("http", "https"):
        return
    health = f"{uri.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout):
            return
    except urllib.error.HTTPError as err:
        reason = f"GET {health} gave HTTP {err.code}: not an MLflow server"
    except (OSError, ValueError) as err:
        cause = getattr(err, "reason", None) or err
        reason = " ".join(str(getattr(cause, "strerror", None) or cause).split()) or "no answer"
    raise ConfigError(
        f"tracking.uri = {uri!r}: no MLflow server answers there ({reason}; timeout "
        f"{timeout:g} s); start one (mlflow server --host HOST --port PORT), or leave "
        "tracking.uri unset (a store in the output folder), or set tracking.enabled=false"
    )


def _check_prior(prior: Any) -> None:
    """The prior spec names something loadable (no weights are read)."""
    from solvers.priors import resolve
    from solvers.priors.base import PriorSpecError

    try:
        resolve(prior)
    except PriorSpecError as err:
        raise ConfigError(f"prior: {err}") from err


def _names_a_path(prior: Any) -> bool:
    """Whether a prior spec points into the file system (checked by ``check_paths``, where
    environment variables are expanded) rather than naming a shipped prior or a hub model."""
    target = prior.get("path", prior.get("name")) if isinstance(prior, Mapping) else prior
    return (isinstance(prior, Mapping) and "path" in prior) or (
        isinstance(target, str) and (any(c in target for c in "/\\$~") or target.startswith("."))
    )


def expand(value: Any) -> Any:
    """Environment variables (``$DIPSWARM_DATA``, ``${HOME}``) expanded in strings, recursively."""
    if isinstance(value, str):
        return (
            os.path.expandvars(os.path.expanduser(value))
            if "$" in value or value.startswith("~")
            else value
        )
    if isinstance(value, dict):
        return {k: expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v) for v in value]
    return value


def plain(value: Any) -> Any:
    """Settings as plain YAML data: dataclasses (through ``to_config`` where they define it) as
    dicts, tuples as lists."""
    if hasattr(value, "to_config"):
        return value.to_config()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def dump_config(config: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (``load_config`` reads it back)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
