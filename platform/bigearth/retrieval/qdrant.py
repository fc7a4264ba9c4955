"""A Qdrant server through `qdrant-client` (or its local mode, which has the same client API)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import tenacity

from bigearth.retrieval.backends import (
    DEFAULT_COLLECTION,
    IndexSettings,
    VectorIndex,
    VectorIndexError,
    build_filter,
    quantization_for,
)
from bigearth.retrieval.schema import PAYLOAD_INDEXES, Hit, IndexRecord, SearchFilter, point_id


class QdrantIndex(VectorIndex):
    """A collection on a Qdrant server (or in qdrant-client's local mode, the same client API)."""

    def __init__(
        self,
        target: str,
        collection: str = DEFAULT_COLLECTION,
        api_key: str | None = None,
        settings: IndexSettings | None = None,
        timeout: int = 60,
    ) -> None:
        super().__init__(target, collection)
        from qdrant_client import QdrantClient

        self.settings = settings or IndexSettings()
        self.local = target.startswith("qdrant-local:")
        if self.local:
            # Local mode ignores payload indexes and search params (exact search); say so once, not per call.
            warnings.filterwarnings("ignore", message="(Payload indexes|Local mode performs)", category=UserWarning)
            location = target.removeprefix("qdrant-local:")
            self.client = QdrantClient(location=":memory:") if location == ":memory:" else QdrantClient(path=location)
        else:
            self.client = QdrantClient(url=target, api_key=api_key or os.environ.get("QDRANT_API_KEY"), timeout=timeout)
        self._meta: dict[str, Any] | None = None

    def describe(self) -> str:
        return f"{self.target} (collection {self.collection!r})"

    def exists(self) -> bool:
        return bool(self.client.collection_exists(self.collection))

    def metadata(self) -> dict[str, Any]:
        if self._meta is None:
            if not self.exists():
                raise VectorIndexError(f"{self.describe()}: no such collection; run jobs/index.py first")
            info = self.client.get_collection(self.collection)
            meta = dict(info.config.metadata or {})
            vectors = info.config.params.vectors
            meta["vectors"] = {name: int(p.size) for name, p in vectors.items()}  # type: ignore[union-attr]
            self._meta = meta
        return self._meta

    def _create(self, vectors: dict[str, int], metadata: dict[str, Any]) -> None:
        from qdrant_client import models as m

        s = self.settings

        def quant(size: int) -> Any:  # the embedded engine's rule (`quantization_for`), per vector
            kind = quantization_for(s, size)
            if kind == "int8":
                return m.ScalarQuantization(
                    scalar=m.ScalarQuantizationConfig(type=m.ScalarType.INT8, quantile=0.99, always_ram=True)
                )
            if kind == "binary":
                return m.BinaryQuantization(binary=m.BinaryQuantizationConfig(always_ram=True))
            return None

        self.client.create_collection(
            self.collection,
            vectors_config={
                name: m.VectorParams(
                    size=size,
                    distance=m.Distance.COSINE,
                    quantization_config=quant(size),
                    on_disk=bool(quantization_for(s, size)) and s.full_vectors_on_disk,
                )
                for name, size in vectors.items()
            },
            hnsw_config=m.HnswConfigDiff(
                m=s.m, ef_construct=s.ef_construct, payload_m=s.payload_m, full_scan_threshold=s.full_scan_threshold_kb
            ),
            optimizers_config=m.OptimizersConfigDiff(indexing_threshold=s.indexing_threshold_kb),
            metadata={**metadata, "engine": "qdrant"},
        )
        kinds = {
            "keyword": m.PayloadSchemaType.KEYWORD,
            "datetime": m.PayloadSchemaType.DATETIME,
            "geo": m.PayloadSchemaType.GEO,
            "bool": m.PayloadSchemaType.BOOL,
        }
        for field, kind in PAYLOAD_INDEXES.items():
            self.client.create_payload_index(self.collection, field, kinds[kind], wait=True)
        self._meta = None

    def _drop(self) -> None:
        self.client.delete_collection(self.collection)
        self._meta = None

    def upsert(
        self, patch_ids: Sequence[str], vectors: dict[str, np.ndarray], payloads: Sequence[dict[str, Any]]
    ) -> None:
        from qdrant_client import models as m

        lists = {name: np.asarray(v, dtype=np.float32).tolist() for name, v in vectors.items()}
        points = [
            m.PointStruct(id=point_id(pid), vector={name: lists[name][i] for name in lists}, payload=dict(payloads[i]))
            for i, pid in enumerate(patch_ids)
        ]
        # a busy server may time out: 3 more tries 0.5, 1 and 2 s apart (upserts are idempotent), then its error
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(4), wait=tenacity.wait_exponential(0.5), reraise=True
        )
        retrying(self.client.upsert, self.collection, points=points, wait=True)

    def _filter(self, flt: SearchFilter | None, exclude: Sequence[str] = ()) -> Any:
        from qdrant_client import models as m

        return build_filter(flt, exclude, m, m.DatetimeRange, lambda ids: m.HasIdCondition(has_id=ids))

    def search(
        self,
        vector: Sequence[float] | np.ndarray,
        using: str,
        k: int = 10,
        flt: SearchFilter | None = None,
        exact: bool = False,
        exclude: Sequence[str] = (),
    ) -> list[Hit]:
        from qdrant_client import models as m

        query = self.check_vector(using, vector)
        result = self.client.query_points(
            self.collection,
            query=query,
            using=using,
            limit=k,
            query_filter=self._filter(flt, exclude),
            search_params=m.SearchParams(
                hnsw_ef=max(self.settings.hnsw_ef, k),
                exact=exact,
                quantization=m.QuantizationSearchParams(
                    rescore=self.settings.rescore, oversampling=self.settings.oversampling
                ),
            ),
            with_payload=True,
        )
        hits = []
        for p in result.points:
            payload = p.payload or {}
            hits.append(Hit.model_construct(patch_id=payload["patch_id"], score=p.score, payload=payload))
        return hits

    def retrieve(self, patch_ids: Sequence[str], with_vectors: bool = False) -> dict[str, IndexRecord]:
        records = self.client.retrieve(
            self.collection, [point_id(p) for p in patch_ids], with_payload=True, with_vectors=with_vectors
        )
        out = {}
        for r in records:
            payload = r.payload or {}
            vectors = {k: list(v) for k, v in (r.vector or {}).items()} if with_vectors else {}  # type: ignore[union-attr]
            out[payload["patch_id"]] = IndexRecord(patch_id=payload["patch_id"], payload=payload, vectors=vectors)
        return out

    def count(self, flt: SearchFilter | None = None) -> int:
        return int(self.client.count(self.collection, count_filter=self._filter(flt), exact=True).count)

    def scroll(
        self, flt: SearchFilter | None = None, limit: int = 24, cursor: str | None = None
    ) -> tuple[list[IndexRecord], str | None]:
        records, after = self.client.scroll(
            self.collection, scroll_filter=self._filter(flt), limit=limit, offset=cursor, with_payload=True
        )
        page = [IndexRecord(patch_id=(r.payload or {})["patch_id"], payload=r.payload or {}) for r in records]
        return page, None if after is None else str(after)

    def facet(self, key: str, flt: SearchFilter | None = None, limit: int = 100) -> dict[str, int]:
        found = self.client.facet(self.collection, key, facet_filter=self._filter(flt), limit=limit, exact=True)
        return {str(h.value): int(h.count) for h in found.hits}

    def close(self) -> None:
        self.client.close()
