"""Experiments run over a local 3-node Ray cluster (1 CPU per node), with faults.

Run by tests/test_runner_cluster.py in a process of its own (the test session's shared Ray
instance cannot host a multi-node ``Cluster``): ``python -m tests.runner_cluster_run OUT``
writes, under OUT, the output folders of

- ``sequential``: the in-process run (``execution.max_concurrent_jobs=1``), the reference;
- ``concurrent``: the same experiment as concurrent pool jobs over the cluster (``auto``);
- ``faults``: the same with ensemble checkpoints on, while one job's pool actor is killed
  mid-job (``ray.kill``), then the worker node of another job is removed mid-job
  (``cluster.remove_node``), then a third job's actor is killed in both its attempts;
- ``killed``: ``python -m experiments.cli run ... --address <cluster>`` with two concurrent
  jobs, SIGKILLed once some images are in results.csv, then run again with ``--resume``;

and prints one JSON line: per pooled run the outcomes of its jobs (key, attempts, node, error),
the keys of the job killed once, of the job on the removed node and of the job lost twice, the
removed node, the cluster's node ids, the seconds each part took and the images in the killed
run's results.csv when it was killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import ray
from ray.cluster_utils import Cluster

import ensemble
from ensemble import JobOutcome, JobPool
from experiments.config import dump_config, load_config
from experiments.runner import run_experiment
from tests.digits_runs import FAST, daps_method, digits_config, result_rows

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 6
# a node's death is noticed within about a second (Ray's default is tens of seconds)
FAST_FAILURE = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 200}


class ObservedPool(JobPool):
    """The runner's job pool, kept in ``POOLS`` (so a test thread can see its running jobs)
    with its outcomes recorded in ``OUTCOMES``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.began = time.monotonic()
        POOLS.append(self)

    def results(self) -> Iterator[JobOutcome]:
        for outcome in super().results():
            OUTCOMES.append((outcome, time.monotonic() - self.began))
            yield outcome


POOLS: list[ObservedPool] = []
OUTCOMES: list[tuple[JobOutcome, float]] = []  # with the seconds since the pool started


def write_config(out: Path) -> Path:
    """The experiment: 6 digits test images, box inpainting, DAPS with 2 particles and 30
    annealing steps (a job lasts long enough to be hit mid-run), one image per job."""
    config = digits_config(
        "cluster",
        out / "unused",
        IMAGES,
        [
            daps_method(
                ensemble={"particles": 2, "selection": "best"},
                overrides={**FAST, "annealing_steps": 30},
            )
        ],
        ["execution.images_per_batch=1"],
        metrics={"lpips": False},
        tracking={"enabled": False},
    )
    path = out / "experiment.yaml"
    dump_config(config, path)
    return path


def observed_run(path: Path, output: Path, overrides: list[str], fault: Callable | None) -> list:
    """Run the experiment in this process with the observed pool; ``fault`` (run in a thread
    with the pool once it exists) injects a failure. Returns the jobs' outcomes."""
    POOLS.clear()
    OUTCOMES.clear()
    config = load_config(path, [f"output={output}", *overrides])
    thread = None
    if fault is not None:

        def wait_then_fault() -> None:
            while not POOLS:
                time.sleep(0.01)
            fault(POOLS[0])

        thread = threading.Thread(target=wait_then_fault, daemon=True)
        thread.start()
    run_experiment(config, progress=False)
    if thread is not None:
        thread.join(timeout=5)
    return [
        {"key": o.key, "attempts": o.attempts, "node": o.node, "error": o.error, "at": round(t, 2)}
        for o, t in OUTCOMES
    ]


def busy_for(
    pool: JobPool, seconds: float, accept: Callable[[Any, str], bool]
) -> tuple[Any, str, str]:
    """The first job (key, worker, node) that ``accept(key, node)`` seen on one worker for
    ``seconds``: mid-job, since a job lasts longer."""
    seen: dict[tuple[Any, str], float] = {}
    while True:
        for key, (worker, node) in pool.running().items():
            now = time.monotonic()
            if accept(key, node) and now - seen.setdefault((key, worker), now) > seconds:
                return key, worker, node
        time.sleep(0.01)


def main(out: Path) -> None:
    path = write_config(out)
    began = time.monotonic()
    seconds: dict[str, float] = {}
    summary: dict[str, Any] = {"seconds": seconds}

    def lap(name: str) -> None:
        seconds[name] = round(time.monotonic() - began - sum(seconds.values()), 2)

    sequential = threading.Thread(  # in-process, no Ray: while the cluster starts
        target=run_experiment,
        args=(load_config(path, [f"output={out / 'sequential'}"]),),
        kwargs={"progress": False},
    )
    sequential.start()
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": FAST_FAILURE}
    )
    workers = {node.node_id: node for node in [cluster.add_node(num_cpus=1) for _ in range(2)]}
    cluster.wait_for_nodes()
    sequential.join()
    lap("sequential and cluster")
    ray.init(address=cluster.address, log_to_driver=False)
    summary["nodes"] = [cluster.head_node.node_id, *workers]
    ensemble.JobPool = ObservedPool  # the runner's pool (imported from ensemble when it runs)
    pooled = ["execution.max_concurrent_jobs=auto", "execution.cpus_per_job=1"]

    summary["concurrent"] = observed_run(path, out / "concurrent", pooled, None)

    lap("concurrent")
    faults: dict[str, Any] = {}

    def faults_mid_jobs(pool: JobPool) -> None:
        """Kill one job's actor; remove the node of another; kill a third job's actor twice."""
        key, worker, _ = busy_for(pool, 0.2, lambda key, node: True)
        ray.kill(ray.get_actor(worker))
        faults["killed"] = key
        key, _, node = busy_for(
            pool, 0.1, lambda key, node: key != faults["killed"] and node in workers
        )
        cluster.remove_node(workers[node])
        faults["removed"], faults["removed_job"] = node, key
        lost = {faults["killed"], key}
        key, worker, _ = busy_for(pool, 0.1, lambda key, node: key not in lost)
        ray.kill(ray.get_actor(worker))
        _, worker, _ = busy_for(pool, 0.1, lambda other, node: other == key)
        ray.kill(ray.get_actor(worker))
        faults["lost_twice"] = key

    checkpoints = [f"ensemble.checkpoint_dir={out / 'checkpoints'}", "ensemble.checkpoint_every=5"]
    summary["faults"] = observed_run(path, out / "faults", [*pooled, *checkpoints], faults_mid_jobs)
    summary.update(faults)
    lap("faults")

    ray.shutdown()  # the killed driver and its resumption connect on their own
    command = [
        sys.executable,
        "-m",
        "experiments.cli",
        "run",
        str(path),
        f"output={out / 'killed'}",
        "execution.max_concurrent_jobs=2",
        "--address",
        cluster.address,
        "--no-progress",
    ]
    driver = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL)
    results = out / "killed" / "results.csv"
    while driver.poll() is None and not (
        results.exists() and len(result_rows(results.parent)) >= 2
    ):
        time.sleep(0.01)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    lap("killed")
    summary["killed_with"] = [r["image"] for r in result_rows(out / "killed")]
    resumed = subprocess.run([*command, "--resume"], cwd=ROOT, capture_output=True, text=True)
    summary["resumed_rc"] = resumed.returncode
    summary["resumed_stderr"] = resumed.stderr[-3000:]
    lap("resumed")
    cluster.shutdown()
    print(json.dumps(summary))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
