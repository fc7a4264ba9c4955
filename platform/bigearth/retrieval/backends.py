"""Two engines behind one small interface (`VectorIndex`), chosen by the target:

- a folder (the default): the embedded engine, Qdrant's own HNSW engine in-process (`qdrant-edge-py`); the
  collection is the folder `TARGET/COLLECTION/` (the engine's shard plus `collection.json`);
- `http://` / `https://`: a Qdrant server through `qdrant-client` (API key from the argument or `QDRANT_API_KEY`);
- `qdrant-local:PATH` or `qdrant-local::memory:`: qdrant-client's local mode (exact brute force in Python: for
  tests and small experiments, same client code path as a server).

Both pass the same contract tests (tests/test_retrieval.py).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bigearth.retrieval.schema import PAYLOAD_INDEXES, Hit, IndexRecord, SearchFilter, point_id

DEFAULT_COLLECTION = "bigearthnet"
COLLECTION_META = "collection.json"


class VectorIndexError(LookupError):
    """The index or collection is missing, or does not fit what was asked."""


@dataclass(frozen=True)
class IndexSettings:
    """HNSW and storage settings (server and embedded engine alike)."""

    m: int = 16
    ef_construct: int = 128
    hnsw_ef: int = 128  # search-time candidate list: recall against latency
    payload_m: int = 16  # extra links per payload-index value: fast filtered search
    quantization: str | None = "int8"  # scalar quantization of vectors over 64 dims (kept in RAM, rescored)
    oversampling: float = 2.0  # quantized candidates fetched per result, then rescored with the full vectors
    full_scan_threshold_kb: int = 1000  # below this many KB of vectors a filtered query scans instead


class VectorIndex(ABC):
    """A collection of pairs: named vectors + payload, one point per patch id."""

    def __init__(self, target: str, collection: str) -> None:
        self.target, self.collection = target, collection

    def describe(self) -> str:
        return f"{self.target} (collection {self.collection!r})"

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def _create(self, vectors: dict[str, int], metadata: dict[str, Any]) -> None: ...

    @abstractmethod
    def metadata(self) -> dict[str, Any]:
        """What `create` stored: `vectors` (name -> size) and the caller's fields (model, checkpoint, classes)."""

    @abstractmethod
    def upsert(
        self, patch_ids: Sequence[str], vectors: dict[str, np.ndarray], payloads: Sequence[dict[str, Any]]
    ) -> None:
        """Insert or overwrite points; `vectors[name]` is `[len(patch_ids), size]`."""

    @abstractmethod
    def search(
        self,
        vector: Sequence[float] | np.ndarray,
        using: str,
        k: int = 10,
        flt: SearchFilter | None = None,
        exact: bool = False,
        exclude: Sequence[str] = (),
    ) -> list[Hit]: ...

    @abstractmethod
    def retrieve(self, patch_ids: Sequence[str], with_vectors: bool = False) -> dict[str, IndexRecord]:
        """Points by patch id (missing ids are left out)."""

    @abstractmethod
    def count(self, flt: SearchFilter | None = None) -> int: ...

    def finish(self) -> None:  # noqa: B027 - an optional hook
        """Build what is left to build (HNSW graphs) after a bulk load."""

    def close(self) -> None:  # noqa: B027 - an optional hook
        """Release the engine."""

    # ---- shared logic
    def create(self, vectors: dict[str, int], metadata: dict[str, Any] | None = None, recreate: bool = False) -> None:
        """Create the collection, or check that the existing one has the same vectors (a re-run updates it)."""
        meta = {**(metadata or {}), "vectors": dict(vectors)}
        if self.exists():
            have = self.metadata().get("vectors")
            if have == dict(vectors) and not recreate:
                return
            if not recreate:
                raise VectorIndexError(
                    f"{self.describe()}: holds vectors {have}, this model gives {dict(vectors)}; "
                    "index into another collection or pass recreate=True (--recreate) to replace it"
                )
            self._drop()
        self._create(dict(vectors), meta)

    def _drop(self) -> None:
        raise NotImplementedError

    def check_vector(self, using: str, vector: Sequence[float] | np.ndarray) -> list[float]:
        sizes: dict[str, int] = self.metadata()["vectors"]
        if using not in sizes:
            raise VectorIndexError(f"{self.describe()} has no {using!r} vectors; it has {sorted(sizes)}")
        v = np.asarray(vector, dtype=np.float32).ravel()
        if v.size != sizes[using] or not np.isfinite(v).all():
            raise ValueError(f"vector: expected {sizes[using]} finite numbers for {using!r}, got {v.size}")
        return v.tolist()

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- embedded engine (qdrant-edge-py)
class EdgeIndex(VectorIndex):
    """Qdrant's engine in-process: HNSW, payload indexes, scalar quantization, persisted in a folder.

    One process writes at a time (the indexing job); readers open the folder once and keep it open.
    """

    def __init__(
        self, target: str, collection: str = DEFAULT_COLLECTION, settings: IndexSettings | None = None
    ) -> None:
        super().__init__(target, collection)
        if "://" in target:
            raise VectorIndexError(f"{target}: the embedded engine needs a local folder (or an http(s):// Qdrant URL)")
        self.settings = settings or IndexSettings()
        self.root = os.path.join(target, collection)
        self._shard: Any = None
        self._meta: dict[str, Any] | None = None

    def exists(self) -> bool:
        return os.path.exists(os.path.join(self.root, COLLECTION_META))

    def metadata(self) -> dict[str, Any]:
        if self._meta is None:
            path = os.path.join(self.root, COLLECTION_META)
            if not os.path.exists(path):
                raise VectorIndexError(
                    f"{self.describe()}: no such collection (expected {path}); run jobs/index.py first"
                )
            with open(path) as f:
                self._meta = json.load(f)
        return self._meta

    def _create(self, vectors: dict[str, int], metadata: dict[str, Any]) -> None:
        import qdrant_edge as qe

        s = self.settings
        params = {}
        for name, size in vectors.items():
            quant = None
            if s.quantization == "int8" and size > 64:
                quant = qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True)
            params[name] = qe.EdgeVectorParams(size=size, distance=qe.Distance.Cosine, quantization_config=quant)
        config = qe.EdgeConfig(
            vectors=params,
            hnsw_config=qe.HnswIndexConfig(
                m=s.m, ef_construct=s.ef_construct, full_scan_threshold=s.full_scan_threshold_kb, payload_m=s.payload_m
            ),
        )
        os.makedirs(self.root, exist_ok=True)
        self._shard = qe.EdgeShard.create(os.path.join(self.root, "shard"), config)
        kinds = {
            "keyword": qe.PayloadSchemaType.Keyword,
            "datetime": qe.PayloadSchemaType.Datetime,
            "geo": qe.PayloadSchemaType.Geo,
            "bool": qe.PayloadSchemaType.Bool,
        }
        for field, kind in PAYLOAD_INDEXES.items():
            self._shard.update(qe.UpdateOperation.create_field_index(field, kinds[kind]))
        with open(os.path.join(self.root, COLLECTION_META), "w") as f:
            json.dump({**metadata, "engine": "qdrant-edge", "settings": s.__dict__}, f, indent=1)
        self._meta = None

    def _drop(self) -> None:
        import shutil

        self.close()
        shutil.rmtree(self.root)
        self._meta = None

    @property
    def shard(self) -> Any:
        if self._shard is None:
            import qdrant_edge as qe

            self.metadata()  # a clear error when the collection is missing
            self._shard = qe.EdgeShard.load(os.path.join(self.root, "shard"))
        return self._shard

    def upsert(
        self, patch_ids: Sequence[str], vectors: dict[str, np.ndarray], payloads: Sequence[dict[str, Any]]
    ) -> None:
        import qdrant_edge as qe

        lists = {name: np.asarray(v, dtype=np.float32).tolist() for name, v in vectors.items()}
        points = [
            qe.Point(point_id(pid), {name: lists[name][i] for name in lists}, dict(payloads[i]))
            for i, pid in enumerate(patch_ids)
        ]
        self.shard.update(qe.UpdateOperation.upsert_points(points))

    def finish(self) -> None:
        self.shard.flush()
        self.shard.optimize()
        self.shard.flush()

    def _filter(self, flt: SearchFilter | None, exclude: Sequence[str] = ()) -> Any:
        import qdrant_edge as qe

        must: list[Any] = []
        must_not: list[Any] = []
        for cond in flt.conditions() if flt else ():
            kind, key = cond[0], cond[1]
            if kind == "any":
                must.append(qe.FieldCondition(key=key, match=qe.MatchAny(any=cond[2])))
            elif kind == "value":
                must.append(qe.FieldCondition(key=key, match=qe.MatchValue(value=cond[2])))
            elif kind == "range":
                must.append(qe.FieldCondition(key=key, range=qe.RangeDateTime(gte=cond[2], lte=cond[3])))
            elif kind == "near":
                centre = qe.GeoPoint(lon=cond[3], lat=cond[2])
                must.append(qe.FieldCondition(key=key, geo_radius=qe.GeoRadius(center=centre, radius=cond[4])))
            elif kind == "flag":
                (must if cond[3] else must_not).append(qe.FieldCondition(key=key, match=qe.MatchValue(value=cond[2])))
        if exclude:
            must_not.append(qe.HasIdCondition(point_ids={point_id(p) for p in exclude}))
        return qe.Filter(must=must or None, must_not=must_not or None) if (must or must_not) else None

    def search(
        self,
        vector: Sequence[float] | np.ndarray,
        using: str,
        k: int = 10,
        flt: SearchFilter | None = None,
        exact: bool = False,
        exclude: Sequence[str] = (),
    ) -> list[Hit]:
        import qdrant_edge as qe

        query = self.check_vector(using, vector)
        request = qe.QueryRequest(
            limit=k,
            query=qe.Query.Nearest(query, using=using),
            filter=self._filter(flt, exclude),
            with_payload=True,
            params=qe.SearchParams(
                hnsw_ef=max(self.settings.hnsw_ef, k),
                exact=exact,
                quantization=qe.QuantizationSearchParams(rescore=True, oversampling=self.settings.oversampling),
            ),
        )
        return [
            Hit.model_construct(patch_id=p.payload["patch_id"], score=p.score, payload=p.payload)
            for p in self.shard.query(request)
        ]

    def retrieve(self, patch_ids: Sequence[str], with_vectors: bool = False) -> dict[str, IndexRecord]:
        records = self.shard.retrieve([point_id(p) for p in patch_ids], with_payload=True, with_vector=with_vectors)
        out = {}
        for r in records:
            vectors = {k: list(v) for k, v in (r.vector or {}).items()} if with_vectors else {}
            out[r.payload["patch_id"]] = IndexRecord(patch_id=r.payload["patch_id"], payload=r.payload, vectors=vectors)
        return out

    def count(self, flt: SearchFilter | None = None) -> int:
        import qdrant_edge as qe

        return int(self.shard.count(qe.CountRequest(filter=self._filter(flt), exact=True)))

    def close(self) -> None:
        if self._shard is not None:
            self._shard.flush()
            self._shard.close()
            self._shard = None


# ---------------------------------------------------------------- Qdrant server / local mode (qdrant-client)
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
        quant = None
        if s.quantization == "int8":
            quant = m.ScalarQuantization(scalar=m.ScalarQuantizationConfig(type=m.ScalarType.INT8, always_ram=True))
        self.client.create_collection(
            self.collection,
            vectors_config={
                name: m.VectorParams(size=size, distance=m.Distance.COSINE) for name, size in vectors.items()
            },
            hnsw_config=m.HnswConfigDiff(
                m=s.m, ef_construct=s.ef_construct, payload_m=s.payload_m, full_scan_threshold=s.full_scan_threshold_kb
            ),
            quantization_config=quant,
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
        for attempt in range(4):  # a busy server may time out: retry with backoff, upserts are idempotent
            try:
                self.client.upsert(self.collection, points=points, wait=True)
                return
            except Exception:
                if attempt == 3:
                    raise
                time.sleep(0.5 * 2**attempt)

    def _filter(self, flt: SearchFilter | None, exclude: Sequence[str] = ()) -> Any:
        from qdrant_client import models as m

        must: list[Any] = []
        must_not: list[Any] = []
        for cond in flt.conditions() if flt else ():
            kind, key = cond[0], cond[1]
            if kind == "any":
                must.append(m.FieldCondition(key=key, match=m.MatchAny(any=cond[2])))
            elif kind == "value":
                must.append(m.FieldCondition(key=key, match=m.MatchValue(value=cond[2])))
            elif kind == "range":
                must.append(m.FieldCondition(key=key, range=m.DatetimeRange(gte=cond[2], lte=cond[3])))
            elif kind == "near":
                centre = m.GeoPoint(lon=cond[3], lat=cond[2])
                must.append(m.FieldCondition(key=key, geo_radius=m.GeoRadius(center=centre, radius=cond[4])))
            elif kind == "flag":
                (must if cond[3] else must_not).append(m.FieldCondition(key=key, match=m.MatchValue(value=cond[2])))
        if exclude:
            must_not.append(m.HasIdCondition(has_id=[point_id(p) for p in exclude]))
        return m.Filter(must=must or None, must_not=must_not or None) if (must or must_not) else None

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
                quantization=m.QuantizationSearchParams(rescore=True, oversampling=self.settings.oversampling),
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

    def close(self) -> None:
        self.client.close()


def open_index(
    target: str,
    collection: str = DEFAULT_COLLECTION,
    api_key: str | None = None,
    settings: IndexSettings | None = None,
) -> VectorIndex:
    """The engine for a target: a folder -> embedded engine, http(s):// -> Qdrant server, qdrant-local:... ->
    qdrant-client's local mode."""
    if target.startswith(("http://", "https://", "qdrant-local:")):
        return QdrantIndex(target, collection, api_key=api_key, settings=settings)
    return EdgeIndex(target, collection, settings=settings)
