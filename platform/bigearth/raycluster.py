"""Connecting to Ray: the cluster a job was submitted to, or a local one started on demand."""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def ensure_ray(num_cpus: int | None = None, **kwargs: Any) -> None:
    """Use the running Ray (job submission sets RAY_ADDRESS) or start a local one.

    A local start disables token auth (`RAY_AUTH_MODE=disabled`) unless the caller chose otherwise, so that more
    nodes can join a laptop cluster with `ray start --address`.
    """
    import ray

    if ray.is_initialized():
        return
    if not os.environ.get("RAY_ADDRESS"):
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        kwargs.setdefault("num_cpus", num_cpus)
        kwargs.setdefault("include_dashboard", False)
    kwargs.setdefault("log_to_driver", True)
    ray.init(**{k: v for k, v in kwargs.items() if v is not None})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    log.info("Ray resources: %s", ray.cluster_resources())
