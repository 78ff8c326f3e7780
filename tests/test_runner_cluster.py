"""The runner over a local 3-node Ray cluster (issue: experiments that use the whole cluster):
concurrent jobs give the sequential results.csv values; a killed pool actor, a removed node and
a job lost twice are handled; a driver killed with SIGKILL resumes without repeating an image.

The cluster and the runs live in one subprocess, ``tests/runner_cluster_run.py`` (a process can
hold one cluster, and this session shares one local Ray instance); the tests read its outputs.
Each job is one image, submitted in image order, so job key k is image index k.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.digits_runs import result_rows
from tests.runner_cluster_run import IMAGES

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]
VALUES = ("psnr", "ssim", "measurement_loss", "diversity", "posterior_std", "nfe")


@pytest.fixture(scope="module")
def cluster_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """The helper's summary and its output folder."""
    out = tmp_path_factory.mktemp("cluster")
    done = subprocess.run(
        [sys.executable, "-m", "tests.runner_cluster_run", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), out


def _values(output: Path) -> dict[int, dict[str, str]]:
    """The ok rows' values by image index; every image exactly once."""
    rows = result_rows(output)
    indices = [int(r["index"]) for r in rows]
    assert sorted(indices) == list(range(IMAGES)), indices  # each image once, none repeated
    return {int(r["index"]): {k: r[k] for k in VALUES} for r in rows if r["status"] == "ok"}


def _jobs(summary: dict[str, Any], run: str) -> dict[int, dict[str, Any]]:
    jobs = {job["key"]: job for job in summary[run]}
    assert sorted(jobs) == list(range(IMAGES))  # every job came back once
    return jobs


def test_concurrent_jobs_give_the_sequential_values(cluster_runs) -> None:
    summary, out = cluster_runs
    sequential = _values(out / "sequential")
    assert len(sequential) == IMAGES and all(v["psnr"] for v in sequential.values())
    assert _values(out / "concurrent") == sequential  # one image per job: bit-identical
    jobs = _jobs(summary, "concurrent")
    assert all(job["attempts"] == 1 and job["error"] is None for job in jobs.values())
    assert len({job["node"] for job in jobs.values()}) >= 2  # the cluster's nodes shared them


def test_a_killed_worker_and_a_removed_node_are_survived(cluster_runs) -> None:
    summary, out = cluster_runs
    killed, removed, twice = summary["killed"], summary["removed_job"], summary["lost_twice"]
    assert len({killed, removed, twice}) == 3, summary
    assert summary["removed"] in summary["nodes"][1:]  # a worker node, not the head
    jobs = _jobs(summary, "faults")
    for key in (killed, removed):
        assert jobs[key]["attempts"] == 2 and jobs[key]["error"] is None, jobs[key]
    assert jobs[removed]["node"] != summary["removed"]
    assert all(
        job["attempts"] == 1 and job["error"] is None
        for key, job in jobs.items()
        if key not in (killed, removed, twice)
    )
    sequential = _values(out / "sequential")
    faults = _values(out / "faults")
    assert faults == {i: v for i, v in sequential.items() if i != twice}  # no other row failed
    # a job lost twice is recorded failed with its error, and the experiment went on
    assert jobs[twice]["attempts"] == 2 and "lost its worker 2 times" in jobs[twice]["error"]
    (row,) = [r for r in result_rows(out / "faults") if int(r["index"]) == twice]
    assert row["status"] == "failed" and "lost its worker 2 times" in row["error"]
    assert "(after 2 attempt(s))" in row["error"]
    # each batch checkpoints in its own folder (TASK/METHOD/images_FIRST_COUNT_DIGEST), so a
    # re-run job resumes its own snapshot, not another job's
    saved = (out / "checkpoints" / "box" / "daps").glob("images_*/ensemble_checkpoint.pt")
    firsts = sorted(int(p.parent.name.split("_")[1]) for p in saved)
    assert set(firsts) >= set(faults) and len(firsts) == len(set(firsts))


def test_resume_after_sigkill_repeats_no_image(cluster_runs) -> None:
    summary, out = cluster_runs
    before = summary["killed_with"]
    assert 1 <= len(before) < IMAGES, before  # killed mid-experiment
    assert summary["resumed_rc"] == 0, summary["resumed_stderr"]
    rows = result_rows(out / "killed")
    assert [r["image"] for r in rows[: len(before)]] == before  # the finished rows were kept
    assert _values(out / "killed") == _values(out / "sequential")  # the rest ran once each
