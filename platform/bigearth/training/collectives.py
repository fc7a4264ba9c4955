"""Ray Train's torch backend with the collectives on the right network (`bigearth.execution.netif`): before the
process group starts, every worker names the interface holding its node's Ray address to Gloo and NCCL, so workers
on separate hosts reach each other even where a hostname resolves to loopback."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ray.train.torch.config import TorchConfig, _TorchBackend


def bind_collectives() -> str:
    """In a worker, before `init_process_group`: set the backend variables (`netif.choose`); what was chosen (also
    printed: the worker's output reaches the driver's)."""
    import ray

    from bigearth.execution import netif

    address = ray.util.get_node_ip_address()
    choice = netif.choose(address, netif.interfaces(), os.environ)
    os.environ.update(choice.env)
    print(f"node {address}: {choice.reason}", flush=True)
    return choice.reason


class _Backend(_TorchBackend):  # type: ignore[misc]
    def on_start(self, worker_group: Any, backend_config: Any) -> None:
        worker_group.execute(bind_collectives)
        super().on_start(worker_group, backend_config)


@dataclass
class CollectiveConfig(TorchConfig):  # type: ignore[misc]
    """`TorchConfig` whose backend first binds every worker's collectives to its node's Ray address."""

    @property
    def backend_cls(self) -> type:
        return _Backend
