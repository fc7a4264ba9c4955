"""The in-process executor of training: the units of `bigearth.training.loop` run in this process as the one
worker of a world of 1, with no Ray at all. It writes the run folder Ray Train does (`checkpoint_<epoch>/` folders,
the best `run.keep_checkpoints` by `val_score` (macro AP; mIoU) and the latest kept, `metrics.jsonl`, `curves.png`,
MLflow),
so evaluation, indexing and serving take its runs as they take Ray's, and a local re-run of the same folder resumes
from its latest checkpoint (whichever executor wrote it). Ray Train resumes only its own runs (its
`checkpoint_manager_snapshot.json`): a Ray re-run of a folder a local run wrote is refused, naming it. With no Ray,
`data.pipeline: ray_data` falls back to the worker path (this process reads its input; it says so)."""

from __future__ import annotations

import socket
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from bigearth.core.storage import StorageOptions, join
from bigearth.input.loader import RowGroup, subset_plans
from bigearth.models import checkpoints
from bigearth.training.config import TrainConfig
from bigearth.training.loop import run_worker


@dataclass
class TrainResult:
    """What a finished run returns (as Ray Train's `Result`): its folder and the last epoch's report."""

    path: str
    metrics: dict[str, Any] = field(default_factory=dict)


def device_for(cfg: TrainConfig) -> torch.device:
    """CUDA with `scaling.use_gpu` (refused when there is none), else the CPU."""
    if cfg.scaling.use_gpu:
        if not torch.cuda.is_available():
            raise ValueError("scaling.use_gpu: no CUDA device in this process (the local executor trains here)")
        return torch.device("cuda")
    return torch.device("cpu")


class LocalWorker:
    """This process as the only worker: the plans read from the manifest (or given: the trainer's, of a metadata
    subset), checkpoints copied into the run folder."""

    rank, world = 0, 1

    def __init__(
        self,
        cfg: TrainConfig,
        data: str,
        run_dir: str,
        storage: StorageOptions | None = None,
        plans: tuple[list[RowGroup], list[RowGroup]] | None = None,
    ) -> None:
        self.cfg, self.data, self.run_dir, self.storage = cfg, data, run_dir, storage
        self._plans = plans
        self.device = device_for(cfg)
        self.metrics: dict[str, Any] = {}

    def nodes(self) -> list[str]:
        return [socket.gethostname()]

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def resumed(self) -> AbstractContextManager[str | None]:
        latest = checkpoints.latest(self.run_dir, self.storage)
        if latest is not None:
            print(f"resuming {self.run_dir} from {latest.path} (epoch {latest.record.epoch})")
        return nullcontext(latest.path if latest is not None else None)

    def plans(self) -> tuple[list[RowGroup], list[RowGroup]]:
        if self._plans is not None:
            return self._plans
        d = self.cfg.data
        train_plan, val_plan = subset_plans(self.data, [d.train_split, d.val_split], self.storage, d.subset())
        return train_plan, val_plan

    def batch_stream(self) -> None:
        return None  # one process, no Ray: data.pipeline ray_data falls back to the worker path

    def report(self, metrics: dict[str, Any], checkpoint: str | None) -> None:
        self.metrics = metrics
        if checkpoint is not None:
            checkpoints.copy(checkpoint, join(self.run_dir, f"checkpoint_{int(metrics['epoch']):06d}"), self.storage)
            checkpoints.retain(self.run_dir, self.cfg.run.keep_checkpoints, storage=self.storage)


def fit_local(
    cfg: TrainConfig,
    data: str,
    run_dir: str,
    config: dict[str, Any],
    plans: tuple[list[RowGroup], list[RowGroup]] | None = None,
) -> TrainResult:
    """Train `config` (as `bigearth.training.trainer` gives Ray Train) in this process; the run's result. `plans`:
    the training and validation plans when the trainer made them (else read here)."""
    if cfg.scaling.num_workers > 1:
        print(f"executor local: one process (scaling.num_workers {cfg.scaling.num_workers} is Ray Train's)")
    if cfg.data.pipeline == "ray_data":
        print("executor local: data.pipeline ray_data falls back to worker (no Ray; this process reads its input)")
    worker = LocalWorker(cfg, data, run_dir, config.get("storage"), plans)
    run_worker(worker, config)
    return TrainResult(run_dir, worker.metrics)
