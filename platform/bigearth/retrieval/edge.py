"""The embedded engine: Qdrant's own HNSW engine in-process (`qdrant-edge-py`), persisted in a folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from bigearth.core.records import RecordError, read_json, write_bytes_atomic, write_json_atomic
from bigearth.retrieval.backends import (
    COLLECTION_META,
    DEFAULT_COLLECTION,
    VERSION,
    IndexSettings,
    VectorIndex,
    VectorIndexError,
    build_filter,
    quantization_for,
)
from bigearth.retrieval.schema import PAYLOAD_INDEXES, Hit, IndexRecord, SearchFilter, point_id


class EdgeIndex(VectorIndex):
    """Qdrant's engine in-process: HNSW, payload indexes, scalar quantization, persisted in a folder.

    One process writes at a time (the indexing job); readers open a version once and keep it open. The collection
    is the folder `TARGET/COLLECTION/`: a folder per version and the file `current` naming the live one (replaced
    whole, by a rename); a collection made before versions has its `collection.json` at the top (the version "").
    """

    def __init__(
        self, target: str, collection: str = DEFAULT_COLLECTION, settings: IndexSettings | None = None
    ) -> None:
        super().__init__(target, collection)
        if "://" in target:
            raise VectorIndexError(f"{target}: the embedded engine needs a local folder (or an http(s):// Qdrant URL)")
        self.settings = settings or IndexSettings()
        self.home = os.path.join(target, collection)
        self.pointer = os.path.join(self.home, "current")
        self._shard: Any = None
        self._written = False
        self._meta: dict[str, Any] | None = None

    @property
    def root(self) -> str:
        """The folder of the version this object reads or writes."""
        return os.path.join(self.home, self._pinned()) if self._pinned() else self.home

    def live_version(self) -> str | None:
        try:
            with open(self.pointer) as f:
                name = f.read().strip()
        except FileNotFoundError:
            return "" if os.path.exists(os.path.join(self.home, COLLECTION_META)) else None
        if not VERSION.fullmatch(name):
            raise VectorIndexError(f"{self.pointer}: expected the name of a version folder (v<UTC time>-<6 hex>)")
        return name

    def _pinned(self) -> str:
        if self.version is None and self.live_version() is None:
            raise VectorIndexError(
                f"{self.describe()}: no such collection (expected {os.path.join(self.home, COLLECTION_META)} or "
                f"{self.pointer}); run jobs/index.py first"
            )
        return super()._pinned()

    def _versions(self) -> list[str]:
        names = os.listdir(self.home) if os.path.isdir(self.home) else []
        legacy = [""] if os.path.exists(os.path.join(self.home, COLLECTION_META)) else []
        return legacy + sorted(n for n in names if VERSION.fullmatch(n))

    def _switch(self, version: str) -> None:
        """Point `current` at `version` (written whole: a reader sees the old name or the new one, a crash leaves
        one of them); refused unless that version's folder holds its `collection.json`."""
        if not VERSION.fullmatch(version):
            raise VectorIndexError(f"{self.pointer}: {version!r} is not a version name (v<UTC time>-<6 hex>)")
        if not os.path.isfile(os.path.join(self.home, version, COLLECTION_META)):
            raise VectorIndexError(
                f"{self.describe()}: refusing to make {version!r} live: "
                f"{os.path.join(self.home, version, COLLECTION_META)} does not exist (a removed or unfinished version)"
            )
        write_bytes_atomic(None, self.pointer, (version + "\n").encode())

    def writer_lock(self, job: str, *, break_lock: bool = False) -> Any:
        """`TARGET/.bigearth-lock-COLLECTION.json` (bigearth.core.outputlock)."""
        from bigearth.core.outputlock import OutputLock

        return OutputLock(self.target, job, name=f".bigearth-lock-{self.collection}.json", break_lock=break_lock)

    def _remove(self, version: str) -> None:
        import shutil

        if version == self.version:
            self._forget()
        if version:
            shutil.rmtree(os.path.join(self.home, version), ignore_errors=True)
        else:  # the collection made before versions: its files at the top
            shutil.rmtree(os.path.join(self.home, "shard"), ignore_errors=True)
            if os.path.exists(os.path.join(self.home, COLLECTION_META)):
                os.remove(os.path.join(self.home, COLLECTION_META))

    def _at(self, version: str) -> EdgeIndex:
        other = EdgeIndex(self.target, self.collection, self.settings)
        other.version = version
        return other

    def _forget(self) -> None:
        self.close()
        self._meta = None

    def metadata(self) -> dict[str, Any]:
        if self._meta is None:
            path = os.path.join(self.root, COLLECTION_META)
            if not os.path.exists(path):
                raise VectorIndexError(
                    f"{self.describe()}: no such collection (expected {path}); run jobs/index.py first"
                )
            try:
                self._meta = read_json(None, path, "index collection's metadata")
            except RecordError as e:
                raise VectorIndexError(f"{e}; index this collection again (bigearth index --recreate)") from None
        return self._meta

    def _create(self, vectors: dict[str, int], metadata: dict[str, Any]) -> None:
        import qdrant_edge as qe

        s = self.settings
        params = {}
        for name, size in vectors.items():
            kind = quantization_for(s, size)
            quant: Any = None
            if kind == "int8":
                quant = qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=0.99, always_ram=True)
            elif kind == "binary":
                quant = qe.BinaryQuantizationConfig(always_ram=True)
            on_disk = bool(kind) and s.full_vectors_on_disk
            params[name] = qe.EdgeVectorParams(
                size=size, distance=qe.Distance.Cosine, quantization_config=quant, on_disk=on_disk
            )
        config = qe.EdgeConfig(
            vectors=params,
            hnsw_config=qe.HnswIndexConfig(
                m=s.m, ef_construct=s.ef_construct, full_scan_threshold=s.full_scan_threshold_kb, payload_m=s.payload_m
            ),
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=s.indexing_threshold_kb),
        )
        os.makedirs(self.root, exist_ok=True)
        self._shard = qe.EdgeShard.create(os.path.join(self.root, "shard"), config)
        self._written = True
        kinds = {
            "keyword": qe.PayloadSchemaType.Keyword,
            "datetime": qe.PayloadSchemaType.Datetime,
            "geo": qe.PayloadSchemaType.Geo,
            "bool": qe.PayloadSchemaType.Bool,
        }
        for field, kind in PAYLOAD_INDEXES.items():
            self._shard.update(qe.UpdateOperation.create_field_index(field, kinds[kind]))
        meta = {**metadata, "engine": "qdrant-edge", "settings": s.__dict__}
        write_json_atomic(None, os.path.join(self.root, COLLECTION_META), meta, indent=1)  # whole or not at all
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
        self._written = True
        self.shard.update(qe.UpdateOperation.upsert_points(points))

    def finish(self) -> None:
        self.shard.flush()
        self.shard.optimize()
        self.shard.flush()
        self._written = False

    def _filter(self, flt: SearchFilter | None, exclude: Sequence[str] = ()) -> Any:
        import qdrant_edge as qe

        return build_filter(flt, exclude, qe, qe.RangeDateTime, lambda ids: qe.HasIdCondition(point_ids=set(ids)))

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
                quantization=qe.QuantizationSearchParams(
                    rescore=self.settings.rescore, oversampling=self.settings.oversampling
                ),
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

    def scroll(
        self, flt: SearchFilter | None = None, limit: int = 24, cursor: str | None = None
    ) -> tuple[list[IndexRecord], str | None]:
        import qdrant_edge as qe

        request = qe.ScrollRequest(offset=cursor, limit=limit, filter=self._filter(flt), with_payload=True)
        records, after = self.shard.scroll(request)
        page = [IndexRecord(patch_id=r.payload["patch_id"], payload=r.payload) for r in records]
        return page, None if after is None else str(after)

    def facet(self, key: str, flt: SearchFilter | None = None, limit: int = 100) -> dict[str, int]:
        import qdrant_edge as qe

        found = self.shard.facet(qe.FacetRequest(key, limit=limit, exact=True, filter=self._filter(flt)))
        return {str(h.value): int(h.count) for h in found.hits}

    def close(self) -> None:
        if self._shard is not None:
            shard, self._shard = self._shard, None
            if self._written:  # a reader has nothing to flush (and its version may be removed by now)
                shard.flush()
            shard.close()
            self._written = False
