"""Study objectives: what one trial of ``dipswarm tune`` measures (docs/search.md).

- ``ImageObjective``: an image metric (PSNR, SSIM, LPIPS, measurement loss) over the validation
  images of an experiment config, with the measurements and seeds of ``dipswarm run``;
- ``GMMObjective``: the sliced Wasserstein distance to the exact posterior over MCGdiff
  instances, scored by experiments/gmm_protocol.py (docs/gmm_benchmark.md).

Both report the running mean after each image or instance (step = items done), so that ASHA
compares trials at equal steps and stops poor ones early; every trial sees the same images,
measurements, instances and seeds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from experiments.config import ExperimentConfig, MethodConfig
from experiments.gmm_protocol import ExactInstance

if TYPE_CHECKING:
    import search
    from experiments.tune_config import GMMConfig

IMAGE_METRICS = ("psnr", "ssim", "lpips", "measurement_loss")
GMM_METRIC = "sliced_wasserstein"


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
    of the method's overrides; measurements, seeds and batches (``execution``) are those of
    ``dipswarm run``, so a trial's images are solved as batched ensemble runs."""
    import dataclasses

    import ensemble
    from experiments.batches import BatchRunner, TaskOperators, split
    from experiments.metrics import ensemble_metrics
    from experiments.runner import load_dataset

    task, method = experiment.tasks[0], experiment.methods[0]
    method = dataclasses.replace(method, spec=method.spec.with_overrides(params or {}))
    data = load_dataset(experiment)
    task_operators = TaskOperators(task, tuple(data.images.shape[1:]))
    runner = BatchRunner(experiment, task, method, task_operators, data.images)
    particles = experiment.method_ensemble(method).particles
    size = experiment.execution.batch_images(particles, experiment.device)
    try:
        for batch in split(range(len(data.names)), size):
            began = time.perf_counter()
            solved = runner.solve(batch)
            seconds = (time.perf_counter() - began) / len(batch)
            for image in solved:
                scores = ensemble_metrics(
                    experiment.metrics, image.operator, image.truth, image.y, image.result
                )
                numbers = {k: float(v) for k, v in scores.items() if isinstance(v, int | float)}
                yield {**numbers, "nfe": float(image.result.nfe), "seconds": seconds}
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
    exact samples as particles, same directions) and their ratio. Random streams are keyed by
    ``seed`` and the instance number; ``instances`` defaults to the config's tuning instances."""
    solver = method.spec.with_overrides(params or {}).build()
    for number in gmm.instance_seeds() if instances is None else instances:
        exact = ExactInstance.mcgdiff(
            gmm.d, gmm.d_y, number, latent=gmm.latent, seed=seed, slices=gmm.slices
        )
        problem = exact.problem
        began = time.perf_counter()
        result = solver.sample(
            problem.prior, problem.operator, problem.y, n=gmm.particles, seed=exact.solver_seed
        )
        seconds = time.perf_counter() - began
        reference = exact.reference(gmm.reference_samples)
        sw = exact.sw(result.samples, reference)
        floor = exact.floor(gmm.particles, reference)
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
