"""A job pool on a local 3-node Ray cluster (1 CPU per node), one worker node removed mid-run.

Run by tests/test_ensemble_pool.py in a process of its own (the test session's shared Ray
instance cannot host a multi-node ``Cluster``): ``python -m tests.pool_cluster_run`` prints one
JSON line with, per job, whether the pooled results equal the in-process run, the attempts and
the node it finished on; the removed node; and the cluster's node ids.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray
from ray.cluster_utils import Cluster

import ensemble
from ensemble import EnsembleResult, EnsembleSpec, JobPool
from solvers.priors.gmm import mcgdiff_problem
from tests.ensemble_specs import gmm_daps_spec

JOBS = 9
# a node's death is noticed within about a second (Ray's default is tens of seconds)
FAST_FAILURE = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 200}


def job(index: int) -> EnsembleSpec:
    """Two problems of a d = 8 mixture, 4 particles each, about half a second of steps."""
    problem = mcgdiff_problem(8, 1, index)
    return gmm_daps_spec(
        problem,
        y=torch.cat([problem.y, problem.y]),
        seed=(index, 100 + index),
        particles=4,
        overrides={"annealing_steps": 60, "mcmc_steps": 4},
    )


def same(a: list[EnsembleResult], b: list[EnsembleResult]) -> bool:
    return all(
        torch.equal(x.all_samples, y.all_samples) and x.origin == y.origin and x.nfe == y.nfe
        for x, y in zip(a, b, strict=True)
    )


def remove_busy_node(pool: JobPool, cluster: Cluster, nodes: dict[str, Any], out: list[str]):
    """Remove the first worker node seen running a job for 0.1 s (mid-job: jobs take longer)."""
    seen: dict[str, float] = {}
    while not out:
        for _, node in pool.running().values():
            if node in nodes and time.monotonic() - seen.setdefault(node, time.monotonic()) > 0.1:
                cluster.remove_node(nodes[node])
                out.append(node)
                break
        time.sleep(0.01)


def main() -> None:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "_system_config": FAST_FAILURE},
    )
    workers = {node.node_id: node for node in [cluster.add_node(num_cpus=1) for _ in range(2)]}
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    specs = {i: job(i) for i in range(JOBS)}
    expected = {i: ensemble.run_all(spec) for i, spec in specs.items()}
    removed: list[str] = []
    report = []
    with JobPool(cpus_per_job=1.0) as pool:
        for key, spec in specs.items():
            pool.submit(key, spec)
        watcher = threading.Thread(
            target=remove_busy_node, args=(pool, cluster, workers, removed), daemon=True
        )
        watcher.start()
        for outcome in pool.results():
            same_results = outcome.results is not None and same(
                outcome.results, expected[outcome.key]
            )
            report.append(
                {
                    "key": outcome.key,
                    "same": same_results,
                    "attempts": outcome.attempts,
                    "node": outcome.node,
                    "error": outcome.error,
                }
            )
        concurrent = pool.max_concurrent_jobs
    summary = {
        "jobs": report,
        "removed": removed[0] if removed else "",
        "nodes": [cluster.head_node.node_id, *workers],
        "concurrent": concurrent,
    }
    ray.shutdown()
    cluster.shutdown()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
