"""The one place that connects to Ray (docs/cluster.md): ensembles, studies and experiments
call ``ensure_ray`` before they place work."""

from __future__ import annotations

import functools
import importlib
import logging
import os
from pathlib import Path
from typing import Any

# dipswarm's packages, shipped to the nodes of a cluster it attaches to (Ray runtime
# environment ``py_modules``), so that every worker runs the driver's code; the small shipped
# priors under solvers/priors/weights travel with them
PACKAGES = ("operators", "solvers", "ensemble", "search", "experiments")

# Set to 1 (``dipswarm --verbose``) to see Ray's own messages: its INFO log ("Started a local
# Ray instance") and the raylet's notice of each dead worker. Quiet otherwise; dipswarm says in
# one line when it replaces a worker.
VERBOSE_ENV = "DIPSWARM_VERBOSE"
# The raylet's notice when a worker process dies (a long text that guesses at OOM kills)
WORKER_DIED = "A worker died or was killed"


def verbose() -> bool:
    """Whether Ray's own messages are shown (``DIPSWARM_VERBOSE``)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


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
    unless ``options`` (``ray.init`` keywords) turn them on. Unless ``verbose()``, Ray logs
    warnings only and the raylet's dead-worker notices are dropped."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    else:
        options.setdefault("runtime_env", code_runtime_env())
    if not verbose():
        options.setdefault("logging_level", logging.WARNING)
        _drop_worker_died_notices()
    ray.init(address=address, **{"include_dashboard": False, "log_to_driver": False, **options})


def _drop_worker_died_notices() -> None:
    """Filter the raylet's dead-worker notices out of what Ray's driver prints. Ray has no
    setting for them: its error-listener thread prints every message the raylet publishes
    through ``ray._private.worker.print_to_stdstream``, which is wrapped here once."""
    from ray._private import worker

    printer = worker.print_to_stdstream
    if getattr(printer, "_dipswarm", False):
        return

    @functools.wraps(printer)
    def filtered(data: dict[str, Any], ignore_prefix: bool) -> None:
        lines = data.get("lines", [])
        if data.get("pid") == "raylet" and any(WORKER_DIED in line for line in lines):
            return
        printer(data, ignore_prefix)

    filtered._dipswarm = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = filtered
