"""The deployments behind the ingress: `Classifier` (model replicas, `infer` batched by `@serve.batch`),
`Segmenter` (the same for a segmentation model, `segment`; only with `segmentation_checkpoint`) and `Retriever`
(the vector index and the shard set, `bigearth.serving.retriever`). Importing this imports Ray Serve (for the
decorator), never starts it."""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import serve

from bigearth.serving.classifier import ModelClassifier
from bigearth.serving.retriever import Retriever, missing_vectors
from bigearth.serving.segmenter import ModelSegmenter

__all__ = ["Classifier", "Retriever", "Segmenter", "missing_vectors"]


class Classifier:
    """Model replica: one model (`ModelClassifier`), requests batched by `@serve.batch` (its size and wait set per
    replica); a replica given a GPU runs on CUDA or fails to start."""

    def __init__(self, checkpoint: str, cpus: float, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        import ray

        gpus = ray.get_gpu_ids() if ray.is_initialized() else []  # built outside a replica (a test): no Ray
        self.model = ModelClassifier(checkpoint, cpus, device="cuda" if gpus else None)
        # @serve.batch's own setters (its queue is made lazily, in this replica's process)
        self.infer.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        self.infer.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[attr-defined]

    def describe(self) -> dict[str, Any]:
        return self.model.describe()

    @serve.batch  # callers send one patch each; sized in __init__; `Classifier.infer.__wrapped__` is unbatched
    async def infer(self, items: list[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
        """A batch of patches (`{group: [1,C,H,W]}`; the same groups within a batch are stacked together) ->
        per patch: probabilities (when every group the head needs is present), vectors, and the batch size."""
        return self.model.infer_batch(items)


class Segmenter:
    """Segmentation model replica (`ModelSegmenter`), requests batched by `@serve.batch` as the Classifier's; a
    replica given a GPU runs on CUDA or fails to start."""

    def __init__(self, checkpoint: str, cpus: float, max_batch_size: int, batch_wait_timeout_s: float) -> None:
        import ray

        gpus = ray.get_gpu_ids() if ray.is_initialized() else []
        self.model = ModelSegmenter(checkpoint, cpus, device="cuda" if gpus else None)
        self.segment.set_max_batch_size(max_batch_size)  # type: ignore[attr-defined]
        self.segment.set_batch_wait_timeout_s(batch_wait_timeout_s)  # type: ignore[attr-defined]

    def describe(self) -> dict[str, Any]:
        return self.model.describe()

    @serve.batch
    async def segment(self, items: list[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
        """A batch of patches (`{group: [1,C,H,W]}`) -> per patch: `map` (uint8 [120, 120]) and the batch size."""
        return self.model.segment_batch(items)
