"""The runner solves images in batches (issue: many images in one batch): results do not depend
on the batch size, resume works per image, and a batch that runs out of memory is split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import ensemble
from experiments.batches import TaskOperators
from experiments.config import ExperimentConfig
from experiments.runner import run_experiment
from tests.digits_runs import daps_method, digits_config, result_rows

pytestmark = pytest.mark.slow

SCORES = ("psnr", "ssim", "measurement_loss", "diversity")


def _config(output: Path, batch: int | str, *extra: str, images: int = 4) -> ExperimentConfig:
    return digits_config(
        "batches",
        output,
        images,
        [daps_method(ensemble={"particles": 2, "selection": "best"})],
        [f"execution.images_per_batch={batch}", *extra],
        metrics={"lpips": False},
        tracking={"enabled": False},
    )


def _scores(output: Path) -> dict[str, dict[str, float]]:
    rows = result_rows(output)
    assert all(r["status"] == "ok" for r in rows), rows
    return {r["image"]: {k: float(r[k]) for k in SCORES} for r in rows}


def _assert_same_scores(a: dict, b: dict) -> None:
    # batched network and operator calls differ from per-image ones by float round-off only
    assert a.keys() == b.keys()
    for image in a:
        for key in SCORES:
            assert b[image][key] == pytest.approx(a[image][key], rel=1e-4, abs=1e-6), (image, key)


def test_results_do_not_depend_on_the_batch_size(tmp_path: Path) -> None:
    scores = {}
    for batch in (1, 2, 4):
        output = tmp_path / f"batch{batch}"
        run_experiment(_config(output, batch), progress=False)
        rows = result_rows(output)
        assert [r["index"] for r in rows] == ["0", "1", "2", "3"]
        assert len({r["seed"] for r in rows}) == 4  # one measurement seed per image
        scores[batch] = _scores(output)
    _assert_same_scores(scores[1], scores[2])
    _assert_same_scores(scores[1], scores[4])
    assert scores[1] != {}  # the images did run


def test_a_stopped_batch_resumes_its_unfinished_images_only(tmp_path: Path, monkeypatch) -> None:
    reference = tmp_path / "reference"
    run_experiment(_config(reference, 2), progress=False)

    output = tmp_path / "stopped"
    seen: list[int] = []

    def stop_after_three(row: dict[str, Any]) -> None:
        seen.append(row["index"])
        if len(seen) == 3:
            raise KeyboardInterrupt  # image 2 is on disk, image 3 is not

    with pytest.raises(KeyboardInterrupt):
        run_experiment(_config(output, 1), progress=False, on_image=stop_after_three)
    assert [r["index"] for r in result_rows(output)] == ["0", "1", "2"]

    calls: list[int] = []
    original = ensemble.Ensemble.run_all

    def counting(self, *args, **kwargs):
        calls.append(self.spec.problems)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ensemble.Ensemble, "run_all", counting)
    seen.clear()
    run_experiment(
        _config(output, 2), resume=True, progress=False, on_image=lambda r: seen.append(r["index"])
    )
    assert seen == [3] and calls == [1]  # the unfinished image only, nothing repeated
    assert [r["index"] for r in result_rows(output)] == ["0", "1", "2", "3"]
    _assert_same_scores(_scores(reference), _scores(output))


def test_a_batch_that_runs_out_of_memory_is_split(tmp_path: Path, monkeypatch) -> None:
    reference = tmp_path / "reference"
    run_experiment(_config(reference, 2), progress=False)

    original = ensemble.Ensemble.run_all
    sizes: list[int] = []

    def small_memory(self, *args, **kwargs):
        sizes.append(self.spec.problems)
        if self.spec.problems > 2:  # a simulated accelerator that holds at most 2 images
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ensemble.Ensemble, "run_all", small_memory)
    output = tmp_path / "split"
    with pytest.warns(
        RuntimeWarning, match=r"a batch of 4 images ran out of memory .*batches of 2"
    ):
        run_experiment(_config(output, 4), progress=False)
    assert sizes == [4, 2, 2]
    _assert_same_scores(_scores(reference), _scores(output))


def test_the_cpu_memory_ceiling_splits_then_fails_with_the_reason(tmp_path: Path) -> None:
    output = tmp_path / "ceiling"
    with pytest.warns(RuntimeWarning, match="ran out of memory"):
        run_experiment(_config(output, 2, "execution.memory_limit_mb=1", images=2), progress=False)
    rows = result_rows(output)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("MemoryLimitError: resident memory" in r["error"] for r in rows)
    assert all("execution.memory_limit_mb = 1" in r["error"] for r in rows)


def test_per_image_operators_are_drawn_per_image_and_batched(tmp_path: Path) -> None:
    per_image = [
        "tasks.box.operator=inpaint_random",
        "tasks.box.params={drop: 0.7, seed: 5}",
        "tasks.box.per_image_operator=true",
    ]
    scores = {}
    for batch in (1, 2):
        output = tmp_path / f"batch{batch}"
        run_experiment(_config(output, batch, *per_image, images=2), progress=False)
        scores[batch] = _scores(output)
    _assert_same_scores(scores[1], scores[2])
    config = _config(tmp_path / "unused", 1, *per_image, images=2)
    drawn = TaskOperators(config.tasks[0], (1, 32, 32))
    assert not torch.equal(drawn.of(0).mask, drawn.of(1).mask)  # each image its own mask
    assert torch.equal(drawn.of(1).mask, drawn.of(1).mask)  # and the same one every time


@pytest.mark.ray
def test_concurrent_pool_jobs_give_the_sequential_results(tmp_path: Path, ray_session) -> None:
    sequential = tmp_path / "sequential"
    run_experiment(_config(sequential, 1), progress=False)
    pooled = tmp_path / "pooled"
    run_experiment(
        _config(pooled, 1, "execution.max_concurrent_jobs=2", "execution.cpus_per_job=1"),
        progress=False,
    )
    rows = result_rows(pooled)
    assert sorted(r["index"] for r in rows) == ["0", "1", "2", "3"]  # each image once
    a, b = _scores(sequential), _scores(pooled)
    assert a == b  # single-image jobs run the same code in the pool's actors: bit-identical
    assert [r["nfe"] for r in rows] == [result_rows(sequential)[0]["nfe"]] * 4


def test_job_errors_that_mean_out_of_memory_are_recognised() -> None:
    from experiments.batches import MemoryLimitError, is_out_of_memory

    assert is_out_of_memory("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert is_out_of_memory(MemoryLimitError("resident memory 900 MiB exceeds ..."))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: not enough memory: you tried"))
    assert not is_out_of_memory("FileNotFoundError: dino_model is not a folder")
