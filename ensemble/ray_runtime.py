"""The one place that connects to Ray (docs/cluster.md): ensembles, studies and experiments
call ``ensure_ray`` before they place work."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

# dipswarm's packages, shipped to the nodes of a cluster it attaches to (Ray runtime
# environment ``py_modules``), so that every worker runs the driver's code; the small shipped
# priors under solvers/priors/weights travel with them
PACKAGES = ("operators", "solvers", "ensemble", "search", "experiments")


def code_runtime_env() -> dict[str, Any]:
    """A Ray runtime environment that ships dipswarm's packages (their folders) to the
    workers, leaving caches and compiled files behind."""
    folders = [str(Path(importlib.import_module(name).__file__).parent) for name in PACKAGES]
    return {"py_modules": folders, "excludes": ["__pycache__", "*.pyc"]}


def ensure_ray(address: str | None = None, **options: Any) -> None:
    """Connect to the Ray cluster at ``address``, or start a local instance when it is None,
    unless this process is connected already.

    A local instance runs without usage statistics and without token authentication (it
    listens on this machine only). Attaching to a cluster (``"auto"``, ``"HOST:PORT"``,
    ``"ray://HEAD:10001"``) ships dipswarm's code to its workers (``code_runtime_env``) unless
    ``options`` give a ``runtime_env``. The dashboard and the workers' log forwarding are off
    unless ``options`` (``ray.init`` keywords) turn them on."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    else:
        options.setdefault("runtime_env", code_runtime_env())
    ray.init(address=address, **{"include_dashboard": False, "log_to_driver": False, **options})
