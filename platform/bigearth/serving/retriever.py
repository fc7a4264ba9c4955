"""The Retriever: the vector index and the shard set (patch lookups, search, browse, facets, quicklooks, reference
maps) of one service, as plain methods; Serve runs it as a deployment (`bigearth.serving.deployments`),
`bigearth.serving.local` in-process. No Ray."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bigearth.api.schemas import (
    EXACT_MAX_POINTS,
    ApiError,
    BrowseItem,
    BrowseRequest,
    BrowseResponse,
    Facets,
    PatchInfo,
    SearchHit,
    SearchRequest,
    SearchResponse,
)
from bigearth.core.labels import BEN19 as _BEN19


def _why(early: bool) -> str:
    """Why a model has no single-modality vectors, when it is an early-fusion one."""
    if not early:
        return ""
    return (
        " (an early-fusion model stacks S1 and S2 channels into one network, so it makes only fused vectors; "
        "single-modality and cross-modal search need a model with an encoder per modality, e.g. late)"
    )


def early_fusion_index(meta: dict[str, Any]) -> bool:
    """Whether an index's model fuses S1 and S2 early (its vectors are of both or none): the spec's capability the
    indexer records; an index built before it was recorded says it by its model's name or fusion."""
    if "early_fusion" in meta:
        return bool(meta["early_fusion"])
    m = meta.get("model")
    return isinstance(m, dict) and "early" in (m.get("name"), m.get("fusion"))


def missing_vectors(name: str, have: list[str], early_fusion: bool) -> str:
    """The message for a query vector a model does not make (`early_fusion`: its `ModelSpec.early_fusion`)."""
    early = early_fusion
    return f"this model makes no {name!r} vectors; it makes {sorted(have)}{_why(early)}"


class Retriever:
    """The vector index and the shard set (patch lookups).

    A re-index builds a new version of the collection and switches to it when complete; the Retriever looks at
    most every `recheck_s` seconds whether the live version changed (a file read, or one Qdrant call) and then
    opens it, keeping the one before open for requests still on it, and answers from the old one if the new one
    cannot be read."""

    recheck_s = 1.0

    def __init__(self, index: str, collection: str, data: str, api_key_file: str | None = None) -> None:
        import threading

        from bigearth.core.storage import StorageOptions
        from bigearth.retrieval import open_index
        from bigearth.serving.args import read_qdrant_key
        from bigearth.shards.patches import PatchStore

        # read here, in the replica: a key passed as an argument would be stored in the Serve config
        key = read_qdrant_key(api_key_file)
        self._open = lambda: open_index(index, collection, api_key=key)
        self._index = self._checked_open()  # fail at start-up, not on the first request, when it cannot be read
        self._before: Any = None  # the version before, open for requests that started on it
        self._looked, self._following = time.monotonic(), threading.Lock()
        self.store = PatchStore(data, StorageOptions.from_env())
        # the shard set is fixed while served: whether it holds reference maps is read once (facets), not per request
        first = self.store.ids(None, 0, 1)
        self.reference_maps = bool(first) and self.store.has_pixels(first[0], "reference_map")
        from bigearth.serving.cache import TtlCache

        # browse totals and facets scan the collection: computed once per filter, reused for COUNT_TTL_S
        self.counts = TtlCache()

    def _checked_open(self) -> Any:
        index = self._open()
        try:
            index.metadata()
            index.count()
        except BaseException:
            index.close()
            raise
        return index

    @property
    def index(self) -> Any:
        """The open version of the index, the live one once it has been looked for (see the class)."""
        if time.monotonic() - self._looked >= self.recheck_s and self._following.acquire(blocking=False):
            try:
                self._follow()
            finally:
                self._looked = time.monotonic()
                self._following.release()
        return self._index

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.index.metadata())

    def _follow(self) -> None:
        import logging

        log = logging.getLogger(__name__)
        current, live = self._index, None
        try:
            live = current.live_version()
            if live in (None, current.version):
                return
            fresh = self._checked_open()
        except Exception as e:  # keep answering from the open version; say so once per live version
            if live != getattr(self, "_refused", ...):
                self._refused = live
                log.warning(
                    "index %s: still on version %r, the live one (%r) cannot be opened: %s",
                    current.describe(),
                    current.version,
                    live,
                    e,
                )
            return
        stale, self._before, self._index = self._before, current, fresh
        self.counts.clear()  # totals and facets of the version before must not outlive it
        log.info("index %s: now on version %r (was %r)", fresh.describe(), fresh.version, current.version)
        if stale is not None:
            try:
                stale.close()
            except Exception as e:  # its files may be gone already
                log.info("index %s: closing version %r: %s", stale.describe(), stale.version, e)

    def ready(self) -> dict[str, Any]:
        index = self.index  # follows a switch first (which clears the counts)
        return {
            "collection": index.collection,
            "points": self._count(),  # cached like browse totals: /readyz is open, it must not scan per request
            "vectors": self.meta["vectors"],
            "model": self.meta.get("model"),
            "pairs_in_shards": len(self.store),
        }

    def _patch(self, patch_id: str) -> None:
        from bigearth.shards.patches import UnknownPatch

        try:
            self.store.locate(patch_id)
        except ValueError as e:
            raise ApiError(422, str(e), field="patch_id") from None
        except UnknownPatch as e:
            raise ApiError(404, str(e), field="patch_id") from None

    def patch_ids(self, split: str | None, offset: int, limit: int) -> dict[str, Any]:
        try:
            ids = self.store.ids(split, offset, limit)
        except KeyError as e:
            raise ApiError(422, str(e.args[0]), field="split") from None
        total = self.store.splits()[split] if split else len(self.store)
        return {"patch_ids": ids, "offset": offset, "total": total, "split": split}

    def browse(self, req: dict[str, Any]) -> dict[str, Any]:
        r = BrowseRequest.model_validate(req)
        if r.cursor is not None:  # point ids are UUIDs: anything else is refused alike by every engine
            import uuid

            try:
                uuid.UUID(r.cursor)
            except ValueError:
                raise ApiError(422, f"cursor {r.cursor!r} is not a next_cursor of this index", "cursor") from None
        index = self.index  # the page and its total from one version
        try:
            page, after = index.scroll(r.filter, r.limit, r.cursor)
        except (ValueError, TypeError) as e:  # a cursor the engine cannot read (not one it gave)
            raise ApiError(422, f"cursor {r.cursor!r} is not a next_cursor of this index ({e})", "cursor") from None
        items = [BrowseItem(patch_id=p.patch_id, payload=p.payload) for p in page]
        return BrowseResponse(items=items, total=self._count(r.filter, index), next_cursor=after).model_dump()

    def _count(self, flt: Any = None, index: Any = None) -> int:
        """Points `flt` matches, counted once per filter per COUNT_TTL_S (a page of browse does not rescan). Keyed
        by the index version counted: a count that ends after a switch never answers for the new version."""
        index = index if index is not None else self.index
        key = ("count", index.version, flt.model_dump_json() if flt is not None else None)
        return int(self.counts.get(key, lambda: index.count(flt)))

    def facets(self, classes: list[str]) -> dict[str, Any]:
        index = self.index  # one version for the whole answer

        def scan() -> dict[str, Any]:
            return {key: index.facet(key, limit=1000) for key in ("split", "country", "season", "labels")}

        counts = self.counts.get(("facets", index.version), scan)
        vectors = sorted(index.metadata()["vectors"])
        return Facets(
            total=self._count(index=index),
            classes=classes,
            vectors=vectors,
            reference_maps=self.reference_maps,
            **counts,
        ).model_dump()

    def patch_info(self, patch_id: str) -> dict[str, Any]:
        self._patch(patch_id)
        m = self.store.metadata(patch_id)
        return PatchInfo(
            patch_id=m["patch_id"],
            s1_name=m["s1_name"],
            labels=m["labels"],
            labels43=m["labels43"],
            split=m["split"],
            country=m["country"],
            tile=m["tile"],
            s2_acquisition=m["s2_acquisition"].isoformat() + "Z",
            s1_acquisition=m["s1_acquisition"].isoformat() + "Z",
            epsg=m["epsg"],
            ulx=m["ulx"],
            uly=m["uly"],
            location=m["location"],
            snow=m["contains_seasonal_snow"],
            cloud=m["contains_cloud_or_shadow"],
        ).model_dump()

    def patch_arrays(self, patch_id: str, groups: dict[str, list[str]]) -> dict[str, np.ndarray]:
        self._patch(patch_id)
        return self.store.arrays(patch_id, {g: tuple(b) for g, b in groups.items()})

    def rgb(self, patch_id: str, scale: int) -> bytes:
        from bigearth.core.bands import GROUPS
        from bigearth.core.quicklook import rgb_png

        self._patch(patch_id)
        return rgb_png(self.store.arrays(patch_id, {"s2_10m": GROUPS["s2_10m"]}), scale)

    def reference_png(self, patch_id: str) -> bytes:
        """The pair's reference map (shard column `reference_map`, CLC codes) as a paletted PNG of its 19 classes;
        a 404 naming the pair when the shard set has no maps or the archive none for this pair. A stored map that is
        no map (its size, a code no CLC code) is corrupt data: a `ShardFormatError` naming the pair (a 500 with an
        error id, as a damaged shard page)."""
        from bigearth.core.labels import UnknownLabelError
        from bigearth.core.quicklook import reference_map_png
        from bigearth.shards.format import ShardFormatError

        self._patch(patch_id)
        if not self.store.has_pixels(patch_id, "reference_map"):
            raise ApiError(
                404, f"patch {patch_id!r}: this shard set holds no reference maps (ingested without them)", "patch_id"
            )
        value = self.store.row(patch_id, ["reference_map"]).column(0)[0].as_py()
        if value is None:
            raise ApiError(404, f"patch {patch_id!r} has no reference map (the archive has none for it)", "patch_id")
        where, fix = f"patch {patch_id!r}: its stored reference map", "re-run the ingest of this shard set"
        size = 120 * 120 * 2
        if len(value) != size:
            raise ShardFormatError(f"{where} holds {len(value)} bytes, not {size} (120 x 120 uint16 CLC codes); {fix}")
        codes = np.frombuffer(value, "<u2").astype(np.uint16).reshape(120, 120)  # little-endian, as shards.decode
        try:
            return reference_map_png(codes, where=where)
        except UnknownLabelError as e:
            raise ShardFormatError(f"{e}; {fix}") from None

    def search(self, req: dict[str, Any], query_vectors: dict[str, list[float]] | None) -> dict[str, Any]:
        from bigearth.retrieval import SearchFilter, VectorIndexError

        r = SearchRequest.model_validate(req)
        sizes = self.meta["vectors"]
        query_modality = r.query_modality or r.using
        for field, name in (("using", r.using), ("query_modality", query_modality)):
            if name not in sizes:
                early = early_fusion_index(self.meta)
                raise ApiError(422, f"this index has no {name!r} vectors; it has {sorted(sizes)}{_why(early)}", field)
        t = time.perf_counter()
        exclude: list[str] = []
        if r.vector is not None:
            vector: Any = r.vector
        elif query_vectors is not None:
            if query_modality not in query_vectors:
                raise ApiError(
                    422,
                    f"the uploaded patch gives {sorted(query_vectors)} vectors, not {query_modality!r}: upload "
                    f"the bands of that modality",
                    field="query_modality",
                )
            vector = query_vectors[query_modality]
        elif r.patch_id is not None:
            from bigearth.archive.names import PatchNameError, check_safe_id

            try:
                check_safe_id(r.patch_id)
            except PatchNameError as e:
                raise ApiError(422, str(e), field="patch_id") from None
            record = self.index.retrieve([r.patch_id], with_vectors=True).get(r.patch_id)
            if record is None:
                raise ApiError(404, f"patch {r.patch_id!r} is not in the index", field="patch_id")
            vector = record.vectors[query_modality]
            exclude = [] if r.include_query else [r.patch_id]
        else:
            raise ApiError(422, "give a patch_id, a vector, or upload a patch", field="patch_id")
        if r.exact and (points := self._count()) > EXACT_MAX_POINTS:
            raise ApiError(
                422,
                f"exact search is refused on a collection of {points} points (at most {EXACT_MAX_POINTS}); "
                "leave exact false (HNSW)",
                field="exact",
            )
        flt = r.filter or SearchFilter()
        if self.meta.get("num_classes", 19) == 19:
            bad = [x for x in [*(flt.labels_any or []), *(flt.labels_all or [])] if x not in _BEN19]
            if bad:
                raise ApiError(422, f"unknown 19-class label(s) {bad}; expected one of {list(_BEN19)}", field="filter")
        try:
            hits = self.index.search(vector, r.using, r.k, flt, exact=r.exact, exclude=exclude)
        except VectorIndexError as e:
            raise ApiError(422, str(e), field="using") from None
        except ValueError as e:
            raise ApiError(422, str(e), field="vector") from None
        return SearchResponse(
            hits=[SearchHit(patch_id=h.patch_id, score=h.score, payload=h.payload) for h in hits],
            k=r.k,
            using=r.using,
            query_modality=query_modality,
            query_patch_id=r.patch_id,
            vector_kind=(self.meta.get("vector_kinds") or {}).get(r.using),
            took_ms=round((time.perf_counter() - t) * 1000, 3),
        ).model_dump()
