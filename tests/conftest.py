"""Session-wide test settings: quiet, offline-friendly Ray and MLflow."""

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite is dominated by small tensor ops: one thread avoids oversubscription on 2 cores
# (measured: 2 threads under load made small convolutions several times slower).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray instance for the whole test session (never per test); always a new
    one (``address="local"``): ``ray.init()`` would join any Ray cluster running on this machine,
    such as a multi-node test's or benchmark's ``Cluster`` in another process."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=100 * 2**20,
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _release_parked_ray_workers():
    """End the Ray workers a test parked for reuse (ensemble.backends), so that their CPUs do
    not stay reserved in the session's 2-CPU instance and block a later test's actors."""
    yield
    import sys

    if "ensemble.backends" in sys.modules:
        sys.modules["ensemble.backends"].release_workers()
