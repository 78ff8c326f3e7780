"""The one place that connects to Ray (docs/cluster.md): ensembles, studies and experiments
call ``ensure_ray`` before they place work."""

from __future__ import annotations

import os
from typing import Any


def ensure_ray(address: str | None = None, **options: Any) -> None:
    """Connect to the Ray cluster at ``address``, or start a local instance when it is None,
    unless this process is connected already. A local instance runs without usage statistics
    and without token authentication (it listens on this machine only); the dashboard and the
    workers' log forwarding are off unless ``options`` (``ray.init`` keywords) turn them on."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address=address, **{"include_dashboard": False, "log_to_driver": False, **options})
