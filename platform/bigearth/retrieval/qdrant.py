"""A Qdrant server through `qdrant-client` (or its local mode, which has the same client API)."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import tenacity

from bigearth.core.outputlock import OutputLock
from bigearth.retrieval.backends import (
    DEFAULT_COLLECTION,
    VERSION,
    IndexSettings,
    VectorIndex,
    VectorIndexError,
    build_filter,
    quantization_for,
)
from bigearth.retrieval.schema import PAYLOAD_INDEXES, Hit, IndexRecord, SearchFilter, point_id

_LOCAL: dict[str, list[Any]] = {}  # folder -> [client, users]: qdrant-client's local mode allows one per folder
_LOCAL_LOCK = threading.Lock()


def _local_client(folder: str) -> Any:
    """The process's one client of a local-mode folder (a second one is refused by qdrant-client's lock)."""
    from qdrant_client import QdrantClient

    key = os.path.realpath(folder)
    with _LOCAL_LOCK:
        if key not in _LOCAL:
            _LOCAL[key] = [QdrantClient(path=folder), 0]
        _LOCAL[key][1] += 1
        return _LOCAL[key][0]


def _release_local(folder: str) -> None:
    key = os.path.realpath(folder)
    with _LOCAL_LOCK:
        entry = _LOCAL.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del _LOCAL[key]
                entry[0].close()


class QdrantIndex(VectorIndex):
    """A collection on a Qdrant server (or in qdrant-client's local mode, the same client API).

    The collection's name is an alias of its live version, the collection `COLLECTION-v<UTC time>-<6 hex>`; a
    rebuild moves the alias with one `update_collection_aliases` call (delete and create together). Local mode
    keeps aliases too (in its `meta.json`, replaced whole); it lets one client open a folder, so the objects of one
    process on the same folder share one, and another process waits until it is closed.
    """

    def __init__(
        self,
        target: str,
        collection: str = DEFAULT_COLLECTION,
        api_key: str | None = None,
        settings: IndexSettings | None = None,
        timeout: int = 60,
        client: Any = None,
    ) -> None:
        super().__init__(target, collection)
        from qdrant_client import QdrantClient

        self.settings = settings or IndexSettings()
        self.local = target.startswith("qdrant-local:")
        location = target.removeprefix("qdrant-local:")
        self._folder = location if self.local and location != ":memory:" else None
        self._own_client = client is None
        if client is not None:  # another object's (a rebuild's): closed by that one
            self.client = client
        elif self.local:
            # Local mode ignores payload indexes and search params (exact search); say so once, not per call.
            warnings.filterwarnings("ignore", message="(Payload indexes|Local mode performs)", category=UserWarning)
            self.client = QdrantClient(location=":memory:") if self._folder is None else _local_client(location)
        else:
            self.client = QdrantClient(url=target, api_key=api_key or os.environ.get("QDRANT_API_KEY"), timeout=timeout)
        self._meta: dict[str, Any] | None = None

    def describe(self) -> str:
        return f"{self.target} (collection {self.collection!r})"

    @property
    def name(self) -> str:
        """The Qdrant collection this object reads or writes (a version, or a collection made before versions)."""
        return self._pinned()

    def live_version(self) -> str | None:
        aliases = {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}
        if self.collection in aliases:
            return aliases[self.collection]
        return self.collection if self.client.collection_exists(self.collection) else None

    def _versions(self) -> list[str]:
        names = [c.name for c in self.client.get_collections().collections]
        prefix = self.collection + "-"
        mine = sorted(n for n in names if n.startswith(prefix) and VERSION.fullmatch(n[len(prefix) :]))
        return ([self.collection] if self.collection in names else []) + mine

    def _switch(self, version: str) -> None:
        from qdrant_client import models as m

        aliases = {a.alias_name for a in self.client.get_aliases().aliases}
        if self.collection not in aliases and self.client.collection_exists(self.collection):
            # a collection made before versions holds the name: it goes, the alias takes its place at once
            self.client.delete_collection(self.collection)
        ops: list[Any] = [m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=self.collection))]
        ops = ops if self.collection in aliases else []
        ops.append(
            m.CreateAliasOperation(create_alias=m.CreateAlias(collection_name=version, alias_name=self.collection))
        )
        self.client.update_collection_aliases(change_aliases_operations=ops)

    def writer_lock(self, job: str, *, break_lock: bool = False) -> Any:
        """The marker collection `COLLECTION-lock` (`QdrantLock`)."""
        return QdrantLock(self, job, break_lock=break_lock)

    def _remove(self, version: str) -> None:
        if version == self.version:
            self._forget()
        self.client.delete_collection(version)

    def _at(self, version: str) -> QdrantIndex:
        other = QdrantIndex(self.target, self.collection, settings=self.settings, client=self.client)
        other.version = f"{self.collection}-{version}" if VERSION.fullmatch(version) else version
        return other

    def _forget(self) -> None:
        self._meta = None

    def metadata(self) -> dict[str, Any]:
        if self._meta is None:
            if not self.client.collection_exists(self.name):
                raise VectorIndexError(f"{self.describe()}: no such collection; run jobs/index.py first")
            info = self.client.get_collection(self.name)
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
            self.name,
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
            self.client.create_payload_index(self.name, field, kinds[kind], wait=True)
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
        retrying(self.client.upsert, self.name, points=points, wait=True)

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
            self.name,
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
            self.name, [point_id(p) for p in patch_ids], with_payload=True, with_vectors=with_vectors
        )
        out = {}
        for r in records:
            payload = r.payload or {}
            vectors = {k: list(v) for k, v in (r.vector or {}).items()} if with_vectors else {}  # type: ignore[union-attr]
            out[payload["patch_id"]] = IndexRecord(patch_id=payload["patch_id"], payload=payload, vectors=vectors)
        return out

    def count(self, flt: SearchFilter | None = None) -> int:
        return int(self.client.count(self.name, count_filter=self._filter(flt), exact=True).count)

    def scroll(
        self, flt: SearchFilter | None = None, limit: int = 24, cursor: str | None = None
    ) -> tuple[list[IndexRecord], str | None]:
        records, after = self.client.scroll(
            self.name, scroll_filter=self._filter(flt), limit=limit, offset=cursor, with_payload=True
        )
        page = [IndexRecord(patch_id=(r.payload or {})["patch_id"], payload=r.payload or {}) for r in records]
        return page, None if after is None else str(after)

    def facet(self, key: str, flt: SearchFilter | None = None, limit: int = 100) -> dict[str, int]:
        found = self.client.facet(self.name, key, facet_filter=self._filter(flt), limit=limit, exact=True)
        return {str(h.value): int(h.count) for h in found.hits}

    def close(self) -> None:
        if not self._own_client:
            return
        if self._folder is not None:
            _release_local(self._folder)
            self._own_client = False  # closed once
        else:
            self.client.close()


class QdrantLock(OutputLock):
    """One index job per Qdrant collection: the lock is the marker collection `<collection>-lock`, created
    exclusively (the server refuses a second one of the name), its holder record (job, host, process, start,
    heartbeat, token) in the collection's metadata. Stale, taken over, refreshed and checked as an `OutputLock`;
    a takeover and a heartbeat read, compare, then delete or update (a server has no conditional update): two
    writers taking one stale lock over in the same instant both go on until the next heartbeat tells the loser,
    whose `check` stops it before it publishes, and `prune` never removes a young unpublished version meanwhile."""

    def __init__(self, index: QdrantIndex, job: str, *, break_lock: bool = False, **kwargs: Any) -> None:
        self.index = index
        self.marker = f"{index.collection}-lock"
        super().__init__(index.target, job, name=self.marker, break_lock=break_lock, **kwargs)

    def _open(self, url: str, storage: Any) -> None:
        self.fs, self.root, self.path = None, url, self.marker  # type: ignore[assignment]  # the server holds it
        self.where = f"{url} collection {self.marker!r}"

    def _prepare(self) -> None:
        pass

    def _create(self) -> bool:
        from qdrant_client import models as m

        client = self.index.client
        try:
            client.create_collection(
                self.marker, vectors_config=m.VectorParams(size=1, distance=m.Distance.COSINE), metadata=self._record
            )
        except Exception:
            if client.collection_exists(self.marker):
                return False
            raise
        return True

    def _read_holder(self) -> dict[str, Any] | None:
        client = self.index.client
        try:
            if not client.collection_exists(self.marker):
                return None
            meta = client.get_collection(self.marker).config.metadata
        except Exception as e:  # removed between the two calls, or unreadable
            if not client.collection_exists(self.marker):
                return None
            return {"job": "an unknown writer", "unreadable": f"{type(e).__name__}: {e}"}
        return dict(meta) if meta else {"job": "an unknown writer", "unreadable": "no holder record"}

    def _remove_if(self, token: str | None) -> None:
        holder = self._read_holder()
        if holder is not None and holder.get("token") == token:
            self.index.client.delete_collection(self.marker)

    def _write(self) -> None:
        self.index.client.update_collection(self.marker, metadata=self._record)
