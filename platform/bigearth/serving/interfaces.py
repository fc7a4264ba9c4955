"""What the HTTP application (`bigearth.serving.http`) needs from the rest of the service, as interfaces: a `Classifier`
(the model), optionally a `Segmenter` (a model that makes class maps), a `Retriever` (the vector index and the shard
set) and `Metrics` (the application-wide Prometheus registry). Serve's deployment handles are adapted to them in
`bigearth.serving.ingress`; in-process implementations are in `bigearth.serving.local`.

Every method is async. A request the backend refuses raises `bigearth.api.schemas.ApiError` (its status and field go to
the client); a backend that is restarting or overloaded raises `Unavailable` (a 503 with Retry-After).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Unavailable(Exception):
    """The model or the index cannot answer now (a replica died, restarts or is overloaded): try again shortly."""


class Classifier(Protocol):
    async def describe(self) -> dict[str, Any]:
        """`{"model": ModelInfo as a dict, "groups": {group: [band]}, "vector_groups": {vector: [group]},
        "vectors": {vector: size}, "early_fusion": bool}`."""
        ...

    async def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        """One patch (`{group: [1, C, H, W]}`) -> `{"probabilities": [...] or None, "vectors": {name: array},
        "batch_size": n}` (the size of the batch it ran in)."""
        ...


class Segmenter(Protocol):
    """The segmentation model, when the service has one (`segmentation_checkpoint`)."""

    async def describe(self) -> dict[str, Any]:
        """`{"model": ModelInfo as a dict, "groups": {group: [band]}}` (every group is needed)."""
        ...

    async def segment(self, inputs: dict[str, np.ndarray]) -> dict[str, Any]:
        """One patch (`{group: [1, C, H, W]}`) -> `{"map": uint8 [120, 120] class indices, "batch_size": n}`."""
        ...


class Retriever(Protocol):
    async def ready(self) -> dict[str, Any]:
        """What `/readyz` shows a caller with a key: collection, points, vectors, model, pairs_in_shards."""
        ...

    async def patch_arrays(self, patch_id: str, groups: dict[str, list[str]]) -> dict[str, np.ndarray]: ...

    async def search(self, req: dict[str, Any], query_vectors: dict[str, list[float]] | None) -> dict[str, Any]:
        """A `SearchResponse` as a dict for a `SearchRequest` (as JSON), the query's vectors given for an upload."""
        ...

    async def patch_ids(self, split: str | None, offset: int, limit: int) -> dict[str, Any]: ...

    async def browse(self, req: dict[str, Any]) -> dict[str, Any]: ...

    async def facets(self, classes: list[str]) -> dict[str, Any]: ...

    async def patch_info(self, patch_id: str) -> dict[str, Any]: ...

    async def rgb(self, patch_id: str, scale: int) -> bytes: ...

    async def reference_png(self, patch_id: str) -> bytes:
        """The pair's reference map as a paletted PNG; a 404 naming the pair when it has none."""
        ...


class Metrics(Protocol):
    """The application's metrics (`bigearth.serving.metrics.MetricsHub`), shared by every ingress replica."""

    async def merge(self, replica: str, pending: dict[str, Any]) -> None:
        """Add what one ingress replica counted (`Pending.as_dict()`)."""
        ...

    async def render(self) -> bytes:
        """The Prometheus text of the whole application."""
        ...
