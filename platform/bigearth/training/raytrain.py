"""Ray Train's per-worker function: a `Worker` over Ray Train's context (rank, world, device, DDP, the plans it
was given, the checkpoint to resume from, `ray.train.report`) running `bigearth.training.loop.run_worker`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch

from bigearth.input.loader import RowGroup, plan_of
from bigearth.training.loop import run_worker

#: The Ray Train dataset of `data.pipeline: ray_data` batches (split among the workers by DataConfig).
BATCHES = "train_batches"


class RayWorker:
    """This process as a Ray Train worker."""

    def __init__(self, pipeline: str = "worker") -> None:
        import ray.train
        import ray.train.torch

        self.pipeline = pipeline
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device: torch.device = ray.train.torch.get_device()

    def nodes(self) -> list[str]:
        import ray

        nodes = [ray.get_runtime_context().get_node_id()] * self.world
        if torch.distributed.is_initialized():
            torch.distributed.all_gather_object(nodes, nodes[0])
        return nodes

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)  # type: ignore[no-any-return]

    def resumed(self) -> AbstractContextManager[str | None]:
        return _resumed()

    def plans(self) -> tuple[list[RowGroup], list[RowGroup]]:
        import ray.train

        # every worker gets the whole plan (one entry per row group) once, and takes its share of it each epoch
        return plan_of(ray.train.get_dataset_shard("train")), plan_of(ray.train.get_dataset_shard("validation"))

    def batch_stream(self) -> Any:
        import ray.train

        # data.pipeline ray_data: this worker's split of the collated batches (DataConfig's streaming_split)
        return ray.train.get_dataset_shard(BATCHES) if self.pipeline == "ray_data" else None

    def report(self, metrics: dict[str, Any], checkpoint: str | None) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint) if checkpoint else None)


@contextmanager
def _resumed() -> Iterator[str | None]:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as d:
        yield d


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker` (the config of `bigearth.training.trainer`)."""
    run_worker(RayWorker(config["cfg"]["data"]["pipeline"]), config)
