"""The job pool: concurrent jobs give the in-process results in completion order; a killed
actor, a removed node and a raising job are handled (issue: experiments over the whole cluster).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import ensemble
from ensemble import EnsembleResult, EnsembleSpec, JobPool, Repulsion
from ensemble.pool import PoolWorker
from ensemble.run import CHECKPOINT_FILE
from solvers.priors.gmm import mcgdiff_problem
from tests.ensemble_specs import gmm_daps_spec

ROOT = Path(__file__).resolve().parents[1]


def _job(index: int, **changes: Any) -> EnsembleSpec:
    """Two problems of a d = 8 mixture, 6 DAPS particles each, seeds from the job index."""
    problem = mcgdiff_problem(8, 1, index)
    y = torch.cat([problem.y, problem.y])
    return gmm_daps_spec(problem, **{"y": y, "seed": (index, 50 + index), **changes})


def _assert_same(pooled: list[EnsembleResult], local: list[EnsembleResult]) -> None:
    assert len(pooled) == len(local)
    for a, b in zip(pooled, local, strict=True):
        torch.testing.assert_close(a.all_samples, b.all_samples, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(a.loss, b.loss, rtol=1e-10, atol=1e-10)
        assert (a.status, a.selected, a.origin, a.nfe) == (b.status, b.selected, b.origin, b.nfe)
        assert a.traces["alive"] == b.traces["alive"] and a.traces["ess"] == b.traces["ess"]


def test_pool_arguments_are_checked_before_connecting() -> None:
    for bad in ({"max_attempts": 0}, {"cpus_per_job": -1.0}, {"max_concurrent_jobs": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            JobPool(**bad)


def test_a_pool_actor_loads_its_prior_once_per_prior_spec() -> None:
    worker = PoolWorker(threads=1)  # the actor's class, run in this process
    first = worker.run(_job(0), resume=False)
    prior = worker.group.prior if worker.group is not None else None
    second = worker.run(_job(1), resume=False)
    assert worker.group is not None and worker.group.prior is prior
    _assert_same(first, ensemble.run_all(_job(0)))
    _assert_same(second, ensemble.run_all(_job(1)))
    other = gmm_daps_spec(mcgdiff_problem(4, 1, 0), prior={"name": "gmm", "d": 4})
    _assert_same(worker.run(other, resume=False), ensemble.run_all(other))
    assert worker.group.prior is not prior


@pytest.mark.ray
def test_pooled_jobs_give_the_in_process_results_in_completion_order(ray_session) -> None:
    specs = {f"job{i}": _job(i) for i in range(6)}
    with JobPool(max_concurrent_jobs=2, cpus_per_job=0.5) as pool:
        for key, spec in specs.items():
            pool.submit(key, spec)
        with pytest.raises(ValueError, match="already in the pool"):
            pool.submit("job0", specs["job0"])
        outcomes = list(pool.results())
        counts = pool.counts()
    assert sorted(o.key for o in outcomes) == sorted(specs)
    assert {o.attempts for o in outcomes} == {1} and all(o.error is None for o in outcomes)
    assert len({o.worker for o in outcomes}) <= 2 and all(o.node for o in outcomes)
    assert (counts.done, counts.running, counts.queued, counts.failed) == (6, 0, 0, 0)
    assert counts.driver_seconds > 0
    for outcome in outcomes:
        assert outcome.results is not None
        _assert_same(outcome.results, ensemble.run_all(specs[outcome.key]))


@pytest.mark.ray
def test_a_killed_actor_is_replaced_and_its_job_rerun_from_the_checkpoint(
    ray_session, tmp_path: Path
) -> None:
    slow = _job(
        0,
        overrides={"annealing_steps": 80, "mcmc_steps": 4},
        checkpoint_dir=str(tmp_path),
        checkpoint_every=5,
    )
    quick = _job(1)
    killed: list[str] = []

    def kill_the_slow_job(pool: JobPool) -> None:
        """Once the slow job has written a checkpoint, kill the actor running it."""
        deadline = time.monotonic() + 60
        while not (tmp_path / CHECKPOINT_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        worker, _ = pool.running()["slow"]
        ray_session.kill(ray_session.get_actor(worker))
        killed.append(worker)

    with JobPool(max_concurrent_jobs=2, cpus_per_job=0.5) as pool:
        pool.submit("slow", slow)
        pool.submit("quick", quick)
        killer = threading.Thread(target=kill_the_slow_job, args=(pool,), daemon=True)
        killer.start()
        outcomes = {o.key: o for o in pool.results()}
        killer.join()
    assert len(killed) == 1
    assert outcomes["slow"].attempts == 2 and outcomes["slow"].worker != killed[0]
    assert outcomes["quick"].attempts == 1
    _assert_same(
        outcomes["slow"].results, ensemble.run_all(slow.with_settings(checkpoint_dir=None))
    )
    _assert_same(outcomes["quick"].results, ensemble.run_all(quick))


@pytest.mark.ray
def test_a_job_that_raises_comes_back_failed_after_one_attempt(ray_session) -> None:
    missing = _job(0, prior={"name": "no_such_prior"})
    mismatched = _job(1, prior={"name": "gmm", "d": 4})  # a d = 8 operator on a d = 4 prior
    with JobPool(max_concurrent_jobs=2, cpus_per_job=0.5) as pool:
        pool.submit("missing", missing)
        pool.submit("good", _job(2))
        pool.submit("mismatched", mismatched)
        outcomes = {o.key: o for o in pool.results()}
        counts = pool.counts()
    assert (counts.done, counts.failed) == (1, 2)
    for key, text in (("missing", "PriorSpecError: prior 'no_such_prior'"), ("mismatched", "(4,)")):
        outcome = outcomes[key]
        assert outcome.results is None and outcome.attempts == 1
        assert text in outcome.error and "\x1b" not in outcome.error
        assert "Traceback" not in outcome.error
    _assert_same(outcomes["good"].results, ensemble.run_all(_job(2)))
    assert "[on cluster node " in outcomes["missing"].error  # where the path was not found
    assert "must exist on every node" in outcomes["missing"].error


@pytest.mark.ray
def test_a_multi_worker_job_runs_in_a_placement_group_with_the_in_process_samples(
    ray_session,
) -> None:
    from ray.util import placement_group_table

    spec = _job(3, repulsion=Repulsion(weight=2.0))
    spread = spec.with_settings(workers=2, cpus_per_worker=0.5)
    with JobPool(max_concurrent_jobs=2, cpus_per_job=0.5) as pool:
        with pytest.raises(ValueError, match="placement group of 5 bundles"):
            pool.submit("too big", spec.with_settings(workers=5, cpus_per_worker=1.0))
        pool.submit("spread", spread)
        pool.submit("single", spec)
        outcomes = {o.key: o for o in pool.results()}
    assert outcomes["spread"].worker.startswith("placement group")
    assert outcomes["spread"].attempts == 1 and outcomes["spread"].node
    local = ensemble.run_all(spec)
    _assert_same(outcomes["spread"].results, local)
    _assert_same(outcomes["single"].results, local)
    assert {g["state"] for g in placement_group_table().values()} <= {"REMOVED"}


@pytest.mark.ray
def test_a_three_node_cluster_runs_jobs_on_several_nodes_and_survives_a_removed_node() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tests.pool_cluster_run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    jobs = summary["jobs"]
    assert summary["concurrent"] == 3 and len(jobs) == 9
    assert all(job["same"] and job["error"] is None for job in jobs)
    assert summary["removed"] in summary["nodes"][1:]  # a worker node, not the head
    assert any(job["attempts"] == 2 for job in jobs)
    assert len({job["node"] for job in jobs}) >= 2
    assert summary["removed"] not in {job["node"] for job in jobs if job["attempts"] == 2}
