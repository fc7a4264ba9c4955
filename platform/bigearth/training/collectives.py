"""Ray Train's torch backend with the collectives on the right network (`bigearth.execution.netif`): before the
process group starts, every worker names the interface holding its node's Ray address to Gloo and NCCL, so workers
on separate hosts reach each other even where a hostname resolves to loopback."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from ray.train.torch.config import TorchConfig, _TorchBackend

log = logging.getLogger(__name__)


def bind_collectives() -> str:
    """In a worker, before `init_process_group`: set the backend variables (`netif.choose`); what was chosen."""
    import ray

    from bigearth.execution import netif

    address = ray.util.get_node_ip_address()
    choice = netif.choose(address, netif.interfaces(), os.environ)
    os.environ.update(choice.env)
    return f"{address}: {choice.reason}"


class _Backend(_TorchBackend):  # type: ignore[misc]
    def on_start(self, worker_group: Any, backend_config: Any) -> None:
        for rank, reason in enumerate(worker_group.execute(bind_collectives)):
            log.info("worker %d on %s", rank, reason)
        super().on_start(worker_group, backend_config)


@dataclass
class CollectiveConfig(TorchConfig):  # type: ignore[misc]
    """`TorchConfig` whose backend first binds every worker's collectives to its node's Ray address."""

    @property
    def backend_cls(self) -> type:
        return _Backend
