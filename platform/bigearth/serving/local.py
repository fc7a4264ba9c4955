"""The interfaces of `bigearth.serving.interfaces` in this process, no Ray: the model (`ModelClassifier`), the
index and shards (`Retriever`) and the metrics (`MetricsHub`) called directly, their blocking work in a worker
thread. `create_local_app(args)` is the whole service in one process (no batching across requests, one replica)."""

from __future__ import annotations

from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from bigearth.serving.args import AppArgs
from bigearth.serving.classifier import ModelClassifier
from bigearth.serving.metrics import MetricsHub
from bigearth.serving.openapi import ServiceApi
from bigearth.serving.retriever import Retriever
from bigearth.serving.segmenter import ModelSegmenter


class LocalClassifier:
    """`Classifier` over a `ModelClassifier`: each request a batch of one."""

    def __init__(self, model: ModelClassifier) -> None:
        self.model = model

    async def describe(self) -> dict[str, Any]:
        return self.model.describe()

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        (result,) = await run_in_threadpool(self.model.infer_batch, [inputs])
        return result


class LocalSegmenter:
    """`Segmenter` over a `ModelSegmenter`: each request a batch of one."""

    def __init__(self, model: ModelSegmenter) -> None:
        self.model = model

    async def describe(self) -> dict[str, Any]:
        return self.model.describe()

    async def segment(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        (result,) = await run_in_threadpool(self.model.segment_batch, [inputs])
        return result


class LocalRetriever:
    """`Retriever` over a `Retriever` of this process."""

    def __init__(self, retriever: Retriever) -> None:
        self.retriever = retriever

    async def ready(self) -> dict[str, Any]:
        return await run_in_threadpool(self.retriever.ready)

    async def patch_arrays(self, patch_id: str, groups: dict[str, list[str]]) -> dict[str, np.ndarray]:
        return await run_in_threadpool(self.retriever.patch_arrays, patch_id, groups)

    async def search(self, req: dict[str, Any], query_vectors: dict[str, list[float]] | None) -> dict[str, Any]:
        return await run_in_threadpool(self.retriever.search, req, query_vectors)

    async def patch_ids(self, split: str | None, offset: int, limit: int) -> dict[str, Any]:
        return await run_in_threadpool(self.retriever.patch_ids, split, offset, limit)

    async def browse(self, req: dict[str, Any]) -> dict[str, Any]:
        return await run_in_threadpool(self.retriever.browse, req)

    async def facets(self, classes: list[str]) -> dict[str, Any]:
        return await run_in_threadpool(self.retriever.facets, classes)

    async def patch_info(self, patch_id: str) -> dict[str, Any]:
        return await run_in_threadpool(self.retriever.patch_info, patch_id)

    async def rgb(self, patch_id: str, scale: int) -> bytes:
        return await run_in_threadpool(self.retriever.rgb, patch_id, scale)

    async def reference_png(self, patch_id: str) -> bytes:
        return await run_in_threadpool(self.retriever.reference_png, patch_id)


class LocalMetrics:
    """`Metrics` over a `MetricsHub` of this process."""

    def __init__(self, hub: MetricsHub | None = None) -> None:
        self.hub = hub or MetricsHub()

    async def merge(self, replica: str, pending: dict[str, Any]) -> None:
        self.hub.merge(replica, pending)

    async def render(self) -> bytes:
        return self.hub.render()


def create_local_app(args: AppArgs) -> ServiceApi:
    """The service of `args` (checkpoint, segmentation checkpoint, index, shards, keys, limits) in this process."""
    from bigearth.serving.http import create_app

    model = ModelClassifier(args.checkpoint, args.replica_cpus)
    seg = args.segmentation_checkpoint
    segmenter = LocalSegmenter(ModelSegmenter(seg, args.replica_cpus)) if seg else None
    retriever = Retriever(args.index, args.collection, args.data, args.qdrant_api_key_file)
    return create_app(LocalClassifier(model), LocalRetriever(retriever), LocalMetrics(), args, segmenter)
