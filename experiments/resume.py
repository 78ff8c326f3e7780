"""Resuming a run under a changed config: which fields may change, the refusal, the record.

A resumed run appends rows to the results.csv of the first run, so every field that can change
a finished row must be the same as in the stored config; otherwise results.csv would mix rows
made under two configs. Fields that cannot change finished rows (more images, tracking,
batching, where the particles run) may change; the config of such a resume is saved beside the
stored one with a note of what changed (``config.resume-N.yaml``), and config.yaml keeps the
config the first rows were made with (docs/configuration.md, "Resuming a run").
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from experiments.config import ConfigError, ExperimentConfig, dump_config, from_dict, read_yaml

STORED_CONFIG = "config.yaml"
RESUMED_CONFIG = "config.resume-{}.yaml"  # N = 1, 2, ...: the configs of later resumes

# Ensemble fields that say where the particles run and how a lost worker is recovered, not
# what they compute (see ``may_differ_on_resume``).
PLACEMENT_FIELDS = frozenset(
    {
        "backend",
        "workers",
        "partition",
        "cpus_per_worker",
        "gpus_per_worker",
        "address",
        "checkpoint_every",
        "checkpoint_dir",
        "max_restarts",
        "progress",
    }
)
NAMED_LISTS = ("tasks", "methods")  # list sections whose items are matched by name


class _Absent:
    """The side of a change where the field is not set."""

    def __repr__(self) -> str:
        return "(unset)"


ABSENT: Any = _Absent()


def may_differ_on_resume(path: str, stored: Any, new: Any) -> bool:
    """Whether the config field at the dotted ``path`` may change from ``stored`` to ``new``
    (either may be ``ABSENT``) when a run resumes: true only where no finished row can depend
    on it. The allowed fields, and why:

    - ``name``: the label of the MLflow parent run.
    - ``output``: where the folder is; a moved folder resumes under its new path.
    - ``tracking.*``: where the runs are logged, not what is computed.
    - ``execution.*``: how the images are batched and where the batches run; every image keeps
      its own seeds (config seed, image index, particle index), so its row does not depend on
      them, up to the float round-off of batched kernels (docs/configuration.md, execution).
    - ``ensemble.F`` and ``methods.M.ensemble.F`` for F in ``PLACEMENT_FIELDS``: backend,
      workers, partition, CPUs, GPUs and address say where the particles run, and particle i
      draws from its own generator whatever the split over workers (docs/ensemble.md,
      Backends); checkpoints and restarts recover a lost worker on the same random streams;
      progress is display.
    - ``data.images`` growing (or becoming 0, all): the images are the first N of the split, so
      the finished ones stay the same images. Fewer would leave rows of images the config no
      longer names.
    - a task or method added (``tasks.T`` or ``methods.M`` unset before): its rows are new, and
      seeds do not depend on the task or method, so the other rows stay as they are. One
      removed would leave rows the config no longer names.

    Everything else (prior, data source, seed, device, the tasks and the solver settings,
    particles and their interaction, metrics) can change finished rows and must stay.
    """
    parts = path.split(".")
    if parts[0] in ("name", "output", "tracking", "execution"):
        return True
    if parts[0] == "ensemble":
        return len(parts) == 2 and parts[1] in PLACEMENT_FIELDS
    if parts[0] == "methods" and len(parts) == 4 and parts[2] == "ensemble":
        return parts[3] in PLACEMENT_FIELDS
    if path == "data.images":
        return new == 0 or (stored != 0 and isinstance(new, int) and new >= stored)
    return parts[0] in NAMED_LISTS and len(parts) == 2 and stored is ABSENT


@dataclass(frozen=True)
class Change:
    """One config field that differs: its dotted path, the stored and the new value."""

    path: str
    stored: Any
    new: Any

    @property
    def allowed(self) -> bool:
        return may_differ_on_resume(self.path, self.stored, self.new)

    def __str__(self) -> str:
        return f"{self.path}: {_show(self.stored)} -> {_show(self.new)}"


def config_changes(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """The fields that differ between two plain configs (``ExperimentConfig.to_dict``); tasks
    and methods are matched by name, and an added or removed one is one change."""
    rest = [k for k in {**stored, **new} if k not in NAMED_LISTS]
    changes = _leaf_changes(
        {k: stored.get(k, ABSENT) for k in rest}, {k: new.get(k, ABSENT) for k in rest}
    )
    for section in NAMED_LISTS:
        old_items = {item["name"]: item for item in stored.get(section, [])}
        new_items = {item["name"]: item for item in new.get(section, [])}
        for name in {**old_items, **new_items}:
            old, now = old_items.get(name, ABSENT), new_items.get(name, ABSENT)
            if old is ABSENT or now is ABSENT:
                changes.append(Change(f"{section}.{name}", old, now))
            else:
                changes += _leaf_changes(old, now, f"{section}.{name}")
    return changes


def _leaf_changes(stored: Any, new: Any, path: str = "") -> list[Change]:
    """Differences between two nested mappings, one per differing leaf (a list is a leaf)."""
    if isinstance(stored, Mapping) and isinstance(new, Mapping):
        changes: list[Change] = []
        for key in {**stored, **new}:
            if path.count(".") == 1 and path.split(".")[0] in NAMED_LISTS and key == "name":
                continue  # the item's name is its key
            inner = f"{path}.{key}" if path else str(key)
            changes += _leaf_changes(stored.get(key, ABSENT), new.get(key, ABSENT), inner)
        return changes
    return [] if stored == new else [Change(path, stored, new)]


def _show(value: Any) -> str:
    if value is ABSENT:
        return repr(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    return text.removesuffix("\n...\n").strip()


def latest_config(output: Path) -> Path:
    """The config of the run's last invocation: the newest ``config.resume-N.yaml``, else
    config.yaml."""
    resumes = _resumed_configs(output)
    return resumes[-1][1] if resumes else output / STORED_CONFIG


def _resumed_configs(output: Path) -> list[tuple[int, Path]]:
    prefix, suffix = RESUMED_CONFIG.split("{}")
    found = []
    for path in output.glob(RESUMED_CONFIG.format("*")):
        number = path.name.removeprefix(prefix).removesuffix(suffix)
        if number.isdigit():
            found.append((int(number), path))
    return sorted(found)


def start_fresh(config: ExperimentConfig, output: Path) -> None:
    """A run with no rows yet: its config is config.yaml; records of earlier resumes (of rows
    no longer there) go."""
    for _, path in _resumed_configs(output):
        path.unlink()
    dump_config(config, output / STORED_CONFIG)


def check_resume(config: ExperimentConfig, output: Path) -> None:
    """Before a run resumes the rows in ``output``: raise ``ConfigError`` naming the fields
    that can change finished rows and differ from the latest stored config (nothing is
    written); save a config that differs only in allowed fields as the next
    ``config.resume-N.yaml``, with the changes in its header."""
    latest = latest_config(output)
    if not latest.is_file():  # rows without a stored config: nothing to compare with
        dump_config(config, latest)
        return
    try:
        stored = from_dict(read_yaml(latest)).to_dict()
    except ConfigError as err:
        raise ConfigError(
            f"{latest} cannot be read by this version of dipswarm ({err}); resume with the "
            "version that made it, or choose another output folder (output=...)"
        ) from None
    changes = config_changes(stored, config.to_dict())
    refused = [c for c in changes if not c.allowed]
    if refused:
        fields = "\n".join(f"  {c}" for c in refused)
        raise ConfigError(
            f"{output} holds results made with another config; resuming would mix rows of both "
            f"in results.csv. Fields that change results and differ (stored in {latest.name} "
            f"-> new):\n{fields}\nTo continue that run, resume it with its own config: "
            f"dipswarm run {latest} output={output} --resume (only more images, tasks or "
            "methods, tracking, execution and where the particles run may change: "
            "docs/configuration.md, 'Resuming a run'); for the new config, choose another "
            "output folder (output=...)."
        )
    if changes:
        resumes = _resumed_configs(output)
        number = (resumes[-1][0] if resumes else 0) + 1
        note = "\n".join(f"#   {c}" for c in changes)
        header = (
            f"# The config of a resume on {time.strftime('%Y-%m-%d %H:%M:%S')}. It differs from "
            f"{latest.name} only in\n# fields that cannot change finished rows (stored -> new):\n"
            f"{note}\n# {STORED_CONFIG} holds the config the first rows were made with.\n"
        )
        path = output / RESUMED_CONFIG.format(number)
        dump_config(config, path)
        path.write_text(header + path.read_text())
