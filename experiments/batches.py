"""Solve a batch of images of one (task, method) as one multi-problem ensemble run.

The unit of work is a batch of images x particles (docs/configuration.md, ``execution``): one
ensemble run whose rows hold every image's particles, so a denoiser call serves the whole
batch. Each image keeps its own seeds, (config seed, image index) for the measurement and the
sampler, so its samples do not depend on the batch it ran in. A batch that runs out of memory
(CUDA out-of-memory, or the driver crossing ``execution.memory_limit_mb``) is split in two and
retried, with a warning naming the new batch size.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import ensemble
import operators
from ensemble import EnsembleResult, EnsembleSpec, OperatorSpec
from experiments.config import ExperimentConfig, MethodConfig, TaskConfig, expand
from operators import Operator
from solvers.base import particle_seed

_MEASUREMENT_SALT = 0x3EA5
_SAMPLER_SALT = 0x5A3


class MemoryLimitError(RuntimeError):
    """The driver's resident memory crossed ``execution.memory_limit_mb`` during a batch."""


@dataclass
class SolvedImage:
    """One image of a batch: its index, operator, ground truth, measurement and result."""

    index: int
    operator: Operator
    truth: torch.Tensor
    y: torch.Tensor
    result: EnsembleResult


class TaskOperators:
    """A task's operator for each image: one shared draw of its random parts, or one draw per
    image (``per_image_operator``: the ``seed`` parameter mixed with the image index)."""

    def __init__(self, task: TaskConfig, image_shape: tuple[int, ...]) -> None:
        self.task = task
        self.params = {"shape": tuple(image_shape), **expand(task.params), "sigma": task.sigma}
        self.params["shape"] = tuple(self.params["shape"])
        self.shared = None if task.per_image_operator else self._build(self.params)

    def of(self, index: int) -> Operator:
        """The operator of image ``index``."""
        if self.shared is not None:
            return self.shared
        seed = particle_seed(int(self.params.get("seed", 0)), index)
        return self._build({**self.params, "seed": seed})

    def _build(self, params: dict[str, Any]) -> Operator:
        return operators.build(self.task.operator, **params)


def measurement_seed(config: ExperimentConfig, index: int) -> int:
    """The seed of image ``index``'s measurement noise (recorded in results.csv)."""
    return particle_seed(config.seed ^ _MEASUREMENT_SALT, index)


def sampler_seed(config: ExperimentConfig, index: int) -> int:
    """The seed of image ``index``'s particles (the same in every batch it can run in)."""
    return particle_seed(config.seed ^ _SAMPLER_SALT, index)


def split(indices: Sequence[int], size: int) -> list[list[int]]:
    """Consecutive batches of at most ``size`` images."""
    return [list(indices[i : i + size]) for i in range(0, len(indices), size)]


def measure(
    config: ExperimentConfig, operator: Operator, images: torch.Tensor, index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(truth, y) of image ``index``: y = A(x*) + noise from the image's own seed."""
    truth = images[index : index + 1].to(config.device)
    generator = torch.Generator().manual_seed(measurement_seed(config, index))
    return truth, operator.measure(truth, generator)


def batch_spec(
    config: ExperimentConfig,
    task: TaskConfig,
    method: MethodConfig,
    image_operators: Sequence[Operator],
    ys: Sequence[torch.Tensor],
    indices: Sequence[int],
) -> EnsembleSpec:
    """The ensemble run of a batch of images (one problem each; a single image is the plain
    single-problem run). Workers are capped at the batch's rows; a ``checkpoint_dir`` becomes
    the batch's own folder in it (``checkpoint_folder``), since batches run concurrently."""
    settings = config.method_ensemble(method)
    rows = settings.particles * len(indices)
    settings = settings.replace(progress=False, workers=min(settings.workers, rows))
    if settings.checkpoint_dir is not None:
        folder = checkpoint_folder(settings.checkpoint_dir, task, method, indices)
        settings = settings.replace(checkpoint_dir=str(folder))
    seeds = [sampler_seed(config, i) for i in indices]
    single = len(indices) == 1
    shared = all(op is image_operators[0] for op in image_operators)
    return EnsembleSpec(
        solver=method.spec_for(task),
        prior=expand(config.prior),
        operator=OperatorSpec.of(image_operators[0])
        if shared
        else tuple(OperatorSpec.of(op) for op in image_operators),
        y=ys[0] if single else torch.cat(list(ys)),
        seed=seeds[0] if single else tuple(seeds),
        device=config.device,
        settings=settings,
    )


def checkpoint_folder(
    root: str, task: TaskConfig, method: MethodConfig, indices: Sequence[int]
) -> Path:
    """A batch's checkpoint folder under ``root``: ``TASK/METHOD/images_FIRST_COUNT_DIGEST``,
    the digest naming the exact images, so two batches (concurrent jobs, or the halves of a
    split batch) never share a checkpoint and a job re-run after a lost worker resumes its
    own."""
    digest = hashlib.sha1(",".join(map(str, indices)).encode()).hexdigest()[:8]
    return Path(root) / task.name / method.name / f"images_{indices[0]}_{len(indices)}_{digest}"


@dataclass
class PreparedBatch:
    """A batch measured and ready to run: its images' operators, (truth, y) and the spec."""

    indices: list[int]
    operators: list[Operator]
    measured: list[tuple[torch.Tensor, torch.Tensor]]
    spec: EnsembleSpec

    def solved(self, results: Sequence[EnsembleResult]) -> list[SolvedImage]:
        """The batch's images with the ensemble's per-problem results, in order."""
        return [
            SolvedImage(i, op, truth, y, result)
            for i, op, (truth, y), result in zip(
                self.indices, self.operators, self.measured, results, strict=True
            )
        ]


def split_warning(task: TaskConfig, method: MethodConfig, images: int, reason: str) -> int:
    """Warn that a batch of ``images`` ran out of memory; the size of the retried halves."""
    half = (images + 1) // 2
    warnings.warn(
        f"{task.name} / {method.name}: a batch of {images} images ran out of memory "
        f"({reason}); retrying as batches of {half}",
        RuntimeWarning,
        stacklevel=3,
    )
    return half


@dataclass(frozen=True)
class BatchRunner:
    """What every batch of one (task, method) shares: the config, the task and its operators,
    the method and the dataset's images. ``prepare`` measures a batch and builds its run;
    ``solve`` also runs it in this process."""

    config: ExperimentConfig
    task: TaskConfig
    method: MethodConfig
    task_operators: TaskOperators
    images: torch.Tensor

    def prepare(self, indices: Sequence[int]) -> PreparedBatch:
        """Measure the images ``indices`` and build their ensemble run."""
        config = self.config
        image_operators = [self.task_operators.of(i).to(config.device) for i in indices]
        measured = [
            measure(config, op, self.images, i)
            for op, i in zip(image_operators, indices, strict=True)
        ]
        ys = [y for _, y in measured]
        spec = batch_spec(config, self.task, self.method, image_operators, ys, indices)
        return PreparedBatch(list(indices), image_operators, measured, spec)

    def solve(self, indices: Sequence[int]) -> list[SolvedImage]:
        """Measure and solve the images ``indices`` in one ensemble run in this process (split
        on running out of memory); one ``SolvedImage`` per index, in order."""
        batch = self.prepare(indices)
        guard = _memory_guard(self.config, batch.spec)
        try:
            results = ensemble.Ensemble(batch.spec).run_all(callback=guard)
        except Exception as err:
            if not is_out_of_memory(err) or len(indices) == 1:
                raise
            half = split_warning(self.task, self.method, len(indices), type(err).__name__)
            return [image for part in split(indices, half) for image in self.solve(part)]
        return batch.solved(results)


def is_out_of_memory(err: BaseException | str) -> bool:
    """Whether an error (or a job's error text) means the batch did not fit (CUDA or host
    allocator, or the memory ceiling)."""
    if isinstance(err, MemoryLimitError | MemoryError | torch.OutOfMemoryError):
        return True
    text = str(err).lower()
    return any(m in text for m in ("out of memory", "not enough memory", "outofmemoryerror"))


def resident_mb() -> float:
    """This process's resident memory in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _memory_guard(config: ExperimentConfig, spec: EnsembleSpec) -> Any:
    """A per-step ensemble callback that stops a local batch crossing the memory ceiling."""
    limit = config.execution.memory_limit_mb
    if limit is None or spec.settings.backend != "local":
        return None

    def check(step: int, _: ensemble.Ensemble) -> None:
        used = resident_mb()
        if used > limit:
            raise MemoryLimitError(
                f"resident memory {used:.0f} MiB exceeds execution.memory_limit_mb = {limit:g} "
                f"after step {step}"
            )

    return check
