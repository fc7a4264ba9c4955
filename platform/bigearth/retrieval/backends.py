"""Two engines behind one small interface (`VectorIndex`), chosen by the target:

- a folder (the default): the embedded engine, Qdrant's own HNSW engine in-process (`qdrant-edge-py`); the
  collection is the folder `TARGET/COLLECTION/`: one folder per version (the engine's shard plus `collection.json`)
  and the file `current` naming the live one;
- `http://` / `https://`: a Qdrant server through `qdrant-client` (API key from the argument or `QDRANT_API_KEY`);
- `qdrant-local:PATH` or `qdrant-local::memory:`: qdrant-client's local mode (exact brute force in Python: for
  tests and small experiments, same client code path as a server).

Both pass the same contract tests (tests/integration/test_retrieval.py).

Versions: a collection's name points at one version, the live one (on Qdrant an alias to the collection
`COLLECTION-v<UTC time to the µs>-<6 hex>`, in the embedded engine the file `current`). A rebuild fills a new
version while readers keep the live one and switches the name in one step when it is complete (`publish`); the
previous version is kept for readers that have not looked again yet, older ones and the leftovers of rebuilds that
never finished are removed. A reader stays on the version it opened (`version`) until it asks (`live_version`).
A collection made before versions (a plain Qdrant collection, or a folder with `collection.json` at its top) is
the version `""` (embedded engine) or the collection itself (Qdrant), replaced by the first rebuild.
"""

from __future__ import annotations

import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from bigearth.retrieval.schema import Hit, IndexRecord, SearchFilter, point_id

DEFAULT_COLLECTION = "bigearthnet"
COLLECTION_META = "collection.json"
VERSION = re.compile(r"v\d{8}T\d{12}-[0-9a-f]{6}")  # a version: when its build started (UTC, to the µs), 6 random hex
UNLOCKED_KEEP_S = 24 * 3600.0  # without the writer lock, a version younger than this may be another job's build


VECTOR_KEYS = ("vectors", "quantization", "vector_kinds")  # how vectors are stored: checked by `create` on their own


def version_age_s(version: str, collection: str = "") -> float | None:
    """Seconds since the build of `version` (`v<UTC time>-<hex>`, or Qdrant's `COLLECTION-v...`) started; None for
    a name without a time (a collection made before versions)."""
    name = version.removeprefix(collection + "-") if collection else version
    if not VERSION.fullmatch(name):
        return None
    started = datetime.strptime(name[1:22], "%Y%m%dT%H%M%S%f").replace(tzinfo=UTC)
    return (datetime.now(UTC) - started).total_seconds()


def new_version(existing: Sequence[str] = ()) -> str:
    """A version name that sorts after every one in `existing` (by its time, even if the clock went back) and
    never collides."""
    now = datetime.now(UTC).replace(tzinfo=None)
    stamps = [datetime.strptime(v[1:22], "%Y%m%dT%H%M%S%f") for v in existing if VERSION.fullmatch(v)]
    if stamps and max(stamps) >= now:
        now = max(stamps) + timedelta(microseconds=1)
    return now.strftime("v%Y%m%dT%H%M%S%f") + "-" + secrets.token_hex(3)


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
        self.version: str | None = None  # the version this object reads or writes (None: the live one, on first use)

    def describe(self) -> str:
        return f"{self.target} (collection {self.collection!r})"

    def exists(self) -> bool:
        return (self.version if self.version is not None else self.live_version()) is not None

    @abstractmethod
    def live_version(self) -> str | None:
        """The version the collection's name points at now (asked each time: a file read or one Qdrant call);
        None when there is none."""

    @abstractmethod
    def _versions(self) -> list[str]:
        """Every version of this collection there is, live, previous, older or half-built."""

    @abstractmethod
    def _switch(self, version: str) -> None:
        """Point the collection's name at `version`, in one step."""

    @abstractmethod
    def _remove(self, version: str) -> None:
        """Delete a version (never the live one)."""

    @abstractmethod
    def _at(self, version: str) -> VectorIndex:
        """Another object on the same target and collection, reading and writing `version`."""

    def _forget(self) -> None:  # noqa: B027 - an optional hook
        """Let go of what this object holds of its version (an open engine, cached metadata)."""

    def _pinned(self) -> str:
        """The version this object reads: the live one when it is first asked, then that one until reopened."""
        if self.version is None:
            live = self.live_version()
            if live is None:
                raise VectorIndexError(f"{self.describe()}: no such collection; run jobs/index.py first")
            self.version = live
        return self.version

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
    def _meta_for(self, vectors: dict[str, int], metadata: dict[str, Any] | None) -> dict[str, Any]:
        settings: IndexSettings = getattr(self, "settings", None) or IndexSettings()
        return {**(metadata or {}), "vectors": dict(vectors), "quantization": settings.quantization or "none"}

    def rebuild(
        self, vectors: dict[str, int], metadata: dict[str, Any] | None = None, *, exclusive: bool = False
    ) -> VectorIndex:
        """A new, empty version of this collection that readers do not see: fill it (`upsert`), `finish()`, then
        `publish()`; or `discard()` it. Leftovers of rebuilds that never published are removed first (`prune`;
        `exclusive`: the caller holds the collection's writer lock, so none of them is another job's build)."""
        self.prune(exclusive=exclusive)
        names = [v.removeprefix(self.collection + "-") for v in self._versions()]  # Qdrant's: COLLECTION-v...
        builder = self._at(new_version(names))
        builder._create(dict(vectors), self._meta_for(vectors, metadata))
        return builder

    def publish(self, *, exclusive: bool = False) -> None:
        """Make this object's version the live one (one atomic step), then remove all but it and the previous
        (`prune`). Lets go of the engine first (the embedded engine opens a folder once at a time: the readers'
        turn)."""
        version = self._pinned()
        self._forget()
        self._switch(version)
        self.prune(exclusive=exclusive)

    def discard(self) -> None:
        """Remove this object's version unless it is live (a rebuild that failed): the live one keeps serving."""
        if self.version is not None and self.version != self.live_version():
            self._forget()
            self._remove(self.version)

    def prune(self, *, exclusive: bool = False) -> None:
        """Remove every version but the live one and the one before it (readers that have not looked again still
        read it): older ones, and rebuilds that never published. Unless `exclusive` (the caller holds the
        collection's writer lock), a version whose build started less than `UNLOCKED_KEEP_S` ago is kept: it may
        be another job's build in progress. The live version is read again right before each removal: a switch
        meanwhile stops the pruning (the live one is never removed)."""
        live = self.live_version()
        if live is None:
            return
        versions = self._versions()
        keep = {live, max((v for v in versions if v < live), default=live)}
        for v in versions:
            if v in keep or v == self.version:
                continue
            age = version_age_s(v, self.collection)
            if not exclusive and age is not None and age < UNLOCKED_KEEP_S:
                continue
            if self.live_version() != live:  # another job switched meanwhile: its next prune decides
                return
            self._remove(v)

    def writer_lock(self, job: str, *, break_lock: bool = False) -> Any:
        """The lock one writer of this collection holds (an `OutputLock`; use as a context manager)."""
        raise NotImplementedError

    def differences(
        self, vectors: dict[str, int], metadata: dict[str, Any] | None = None
    ) -> dict[str, tuple[Any, Any]]:
        """What the live version stores differently from what `metadata` (and `vectors`) describe: field ->
        (there, asked). Collections made before a field existed: int8 was the only quantization."""
        meta, old = self._meta_for(vectors, metadata), self.metadata()
        return {
            key: (old.get(key, "int8" if key == "quantization" else None), want)
            for key, want in meta.items()
            if old.get(key, "int8" if key == "quantization" else None) != want
        }

    def create(self, vectors: dict[str, int], metadata: dict[str, Any] | None = None, recreate: bool = False) -> None:
        """Create the collection, or check that the existing one stores the same vectors the same way (the same
        sizes, kinds and quantization): then a re-run updates it in place. `recreate`: a new empty version, live at
        once (the old one is kept as the previous version for its readers, never deleted under them); the indexing
        job uses `rebuild` instead, which switches only when the new version is full."""
        settings: IndexSettings = getattr(self, "settings", None) or IndexSettings()
        meta = {**(metadata or {}), "vectors": dict(vectors), "quantization": settings.quantization or "none"}
        if self.exists():
            old = self.metadata()
            have = old.get("vectors")
            if have != dict(vectors) and not recreate:
                raise VectorIndexError(
                    f"{self.describe()}: holds vectors {have}, this model gives {dict(vectors)}; "
                    "index into another collection or pass recreate=True to replace it"
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
                    "or pass recreate=True to replace it"
                )
            others = {k: d for k, d in self.differences(vectors, metadata).items() if k not in VECTOR_KEYS}
            if others and not recreate:  # another model's or shard set's points: a rebuild, never a silent mix
                said = "; ".join(f"{k} {a!r} there, {b!r} asked" for k, (a, b) in others.items())
                raise VectorIndexError(
                    f"{self.describe()}: was filled from something else ({said}); rebuild it (each run of "
                    "jobs/index.py builds a new version) or pass recreate=True"
                )
            if not recreate:
                return
        builder = self.rebuild(vectors, metadata)
        builder.publish()  # not exclusive: a library call holds no writer lock
        builder.close()
        self._forget()
        self.version = None  # the new live one on next use

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
