"""Two engines behind one small interface (`VectorIndex`), chosen by the target:

- a folder (the default): the embedded engine, Qdrant's own HNSW engine in-process (`qdrant-edge-py`); the
  collection is the folder `TARGET/COLLECTION/` (the engine's shard plus `collection.json`);
- `http://` / `https://`: a Qdrant server through `qdrant-client` (API key from the argument or `QDRANT_API_KEY`);
- `qdrant-local:PATH` or `qdrant-local::memory:`: qdrant-client's local mode (exact brute force in Python: for
  tests and small experiments, same client code path as a server).

Both pass the same contract tests (tests/test_retrieval.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bigearth.retrieval.schema import Hit, IndexRecord, SearchFilter, point_id

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
    quantization: str | None = "int8"  # none | int8 | binary: the in-RAM copy of vectors over `quantize_above` dims
    oversampling: float = 2.0  # quantized candidates fetched per result, then rescored with the full vectors
    rescore: bool = True  # rescore the quantized candidates with the full vectors (False: quantized scores)
    quantize_above: int = 64  # smaller vectors (19-d logits) are stored as they are, in both engines
    full_vectors_on_disk: bool = True  # a quantized vector's full copy on disk (read to rescore): what saves RAM
    full_scan_threshold_kb: int = 1000  # below this many KB of vectors a filtered query scans instead
    indexing_threshold_kb: int | None = None  # segments over this many KB get HNSW and quantization (engine default)


QUANTIZATIONS = ("none", "int8", "binary")


def quantization_for(settings: IndexSettings, size: int) -> str | None:
    """The quantization a vector of `size` dims gets in either engine: None, "int8" or "binary"."""
    q = settings.quantization or "none"
    if q not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {list(QUANTIZATIONS)}, got {q!r}")
    return None if q == "none" or size <= settings.quantize_above else q


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

    @abstractmethod
    def scroll(
        self, flt: SearchFilter | None = None, limit: int = 24, cursor: str | None = None
    ) -> tuple[list[IndexRecord], str | None]:
        """A page of the points `flt` matches, in point-id order (stable, unrelated to time or place), without
        vectors; `cursor` is where the page starts (None: the first), and the second value is the next page's
        cursor (None after the last page)."""

    @abstractmethod
    def facet(self, key: str, flt: SearchFilter | None = None, limit: int = 100) -> dict[str, int]:
        """How many points `flt` matches per value of the keyword payload field `key` (`country`, `labels`, ...),
        most frequent first."""

    def finish(self) -> None:  # noqa: B027 - an optional hook
        """Build what is left to build (HNSW graphs) after a bulk load."""

    def close(self) -> None:  # noqa: B027 - an optional hook
        """Release the engine."""

    # ---- shared logic
    def create(self, vectors: dict[str, int], metadata: dict[str, Any] | None = None, recreate: bool = False) -> None:
        """Create the collection, or check that the existing one stores the same vectors the same way (the same
        sizes, kinds and quantization): then a re-run updates it in place."""
        settings: IndexSettings = getattr(self, "settings", None) or IndexSettings()
        meta = {**(metadata or {}), "vectors": dict(vectors), "quantization": settings.quantization or "none"}
        if self.exists():
            old = self.metadata()
            have = old.get("vectors")
            if have != dict(vectors) and not recreate:
                raise VectorIndexError(
                    f"{self.describe()}: holds vectors {have}, this model gives {dict(vectors)}; "
                    "index into another collection or pass recreate=True (--recreate) to replace it"
                )
            differs = {  # collections made before a key existed: int8 was the only quantization; kinds unknown
                key: (old.get(key, default), meta.get(key))
                for key, default in (("quantization", "int8"), ("vector_kinds", meta.get("vector_kinds")))
                if old.get(key, default) != meta.get(key)
            }
            if differs and not recreate:
                said = "; ".join(f"{k} {a!r} there, {b!r} asked" for k, (a, b) in differs.items())
                raise VectorIndexError(
                    f"{self.describe()}: stores its vectors differently ({said}); index into another collection "
                    "or pass recreate=True (--recreate) to replace it"
                )
            if not recreate:
                return
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


def build_filter(
    flt: SearchFilter | None,
    exclude: Sequence[str],
    models: Any,
    datetime_range: Any,
    has_ids: Any,
) -> Any:
    """An engine's Filter from `SearchFilter.conditions()`: `models` has FieldCondition, MatchAny, MatchValue,
    GeoPoint, GeoRadius and Filter (both engines name them alike); `datetime_range` and `has_ids(ids)` are the
    two that differ."""
    m = models
    must: list[Any] = []
    must_not: list[Any] = []
    for cond in flt.conditions() if flt else ():
        kind, key = cond[0], cond[1]
        if kind == "any":
            must.append(m.FieldCondition(key=key, match=m.MatchAny(any=cond[2])))
        elif kind == "value":
            must.append(m.FieldCondition(key=key, match=m.MatchValue(value=cond[2])))
        elif kind == "range":
            must.append(m.FieldCondition(key=key, range=datetime_range(gte=cond[2], lte=cond[3])))
        elif kind == "near":
            centre = m.GeoPoint(lon=cond[3], lat=cond[2])
            must.append(m.FieldCondition(key=key, geo_radius=m.GeoRadius(center=centre, radius=cond[4])))
        elif kind == "flag":
            (must if cond[3] else must_not).append(m.FieldCondition(key=key, match=m.MatchValue(value=cond[2])))
    if exclude:
        must_not.append(has_ids([point_id(p) for p in exclude]))
    return m.Filter(must=must or None, must_not=must_not or None) if (must or must_not) else None


def open_index(
    target: str,
    collection: str = DEFAULT_COLLECTION,
    api_key: str | None = None,
    settings: IndexSettings | None = None,
) -> VectorIndex:
    """The engine for a target: a folder -> embedded engine, http(s):// -> Qdrant server, qdrant-local:... ->
    qdrant-client's local mode."""
    if target.startswith(("http://", "https://", "qdrant-local:")):
        from bigearth.retrieval.qdrant import QdrantIndex

        return QdrantIndex(target, collection, api_key=api_key, settings=settings)
    from bigearth.retrieval.edge import EdgeIndex

    return EdgeIndex(target, collection, settings=settings)
