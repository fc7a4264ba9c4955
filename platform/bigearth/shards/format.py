"""The shard format: Parquet files of ~1,000 pairs, one row per pair, every band raw at native size.

See docs/data-format.md. Version 2: one fixed-size binary column per band holding the little-endian array bytes in
row-major order, bit-exact with the GeoTIFF; compressed by where the set is written (`bigearth.shards.codecs`: none on a
local disk, zstd over a network; lz4 on request; docs/benchmarks.md); a CRC32 checksum on every page, verified
when read. Shapes, dtypes, compression and the format version are in each file's schema metadata. Version 1
(variable-length binary, zstd, no checksums) stays readable.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from bigearth.core.bands import ALL_BANDS
from bigearth.core.records import RecordError, is_local, read_json, temp_name, write_bytes_atomic
from bigearth.core.storage import join

FORMAT_VERSION = "2"
READABLE_VERSIONS = ("1", "2")  # v1: 14 variable-length binary columns, zstd, no page checksums
MANIFEST = "manifest.json"
#: Beside manifest.json: every quarantined pair (QUARANTINE_SCHEMA), and the pairs written without a reference map
#: (`patch_id`), so that the manifest every reader loads stays small whatever they hold.
QUARANTINE = "quarantine.parquet"
REFERENCE_MAPS_MISSING = "reference_maps_missing.parquet"
QUARANTINE_SCHEMA = pa.schema([("patch_id", pa.string()), ("kind", pa.string()), ("reason", pa.string())])
ROW_GROUP_PAIRS = 128  # rows per Parquet row group: bounds writer memory and lets readers stream
#: Rows per data page: a lookup by patch id (PatchStore) reads one page of each band column, found through the page
#: index (1/16 of a 128-pair row group). 8, not 1: one pair a page made whole-shard reads (training, indexing) ~22 %
#: slower on one core, 8 a page ~3 % (bench/page_size.py, docs/benchmarks.md).
PAGE_PAIRS = 8

#: `--compression` choices -> (Parquet codec, level). On real pixels: none 275 KB a pair, lz4 241 KB, zstd (level 3)
#: 130 KB; the training input reads none ~1.4x lz4 and ~2.4x zstd on a core (docs/benchmarks.md).
COMPRESSIONS: dict[str, tuple[str, int | None]] = {"lz4": ("lz4", None), "zstd": ("zstd", 3), "none": ("none", None)}
#: The default: the codec chosen by where the shards are written (`bigearth.shards.codecs.compression_for`).
AUTO_COMPRESSION = "auto"
DEFAULT_COMPRESSION = AUTO_COMPRESSION
SCHEMA_METADATA = {
    "bigearth.format_version": FORMAT_VERSION,
    "bigearth.bands": json.dumps({b.name: {"shape": list(b.shape), "dtype": b.dtype, "gsd": b.gsd} for b in ALL_BANDS}),
    "bigearth.byte_order": "little",
}

_NAMES = pa.list_(pa.field("element", pa.string()))  # Parquet's compliant list naming, so files read back equal

SHARD_SCHEMA = pa.schema(
    [
        ("patch_id", pa.string()),
        ("s1_name", pa.string()),
        ("split", pa.string()),
        ("labels", _NAMES),
        ("labels43", _NAMES),
        ("country", pa.string()),
        ("tile", pa.string()),
        ("s2_acquisition", pa.timestamp("ms")),
        ("s1_acquisition", pa.timestamp("ms")),
        ("epsg", pa.int32()),
        ("ulx", pa.float64()),
        ("uly", pa.float64()),
        ("contains_seasonal_snow", pa.bool_()),
        ("contains_cloud_or_shadow", pa.bool_()),
        *[(b.name, pa.binary(b.nbytes)) for b in ALL_BANDS],
    ],
    metadata={k.encode(): v.encode() for k, v in SCHEMA_METADATA.items()},
)
META_COLUMNS = [f.name for f in SHARD_SCHEMA if f.name not in {b.name for b in ALL_BANDS}]
#: The optional v2 reference-map column (ingests of archives that have them): CLC codes, uint16 120x120, nullable.
REFERENCE_MAP = pa.field("reference_map", pa.binary(120 * 120 * 2))


class ShardFormatError(ValueError):
    """A shard set or shard file is not in the expected format."""


class ShardWriter:
    """Streams rows into one Parquet shard, a row group at a time. On a local or shared filesystem it writes a
    temporary name and renames it at `close`, so two writers of one shard (a task run again while the first copy,
    on a node cut off from the cluster but not from the volume, still writes) never interleave their bytes: each
    file there is one writer's whole. On object storage an object is one writer's whole by itself (its upload
    completes at close)."""

    def __init__(
        self, fs: AbstractFileSystem, path: str, compression: str = "lz4", reference_maps: bool = False
    ) -> None:
        if compression not in COMPRESSIONS:  # `auto` is the ingest's to resolve, once for the whole shard set
            raise ValueError(f"compression {compression!r}: expected one of {sorted(COMPRESSIONS)}")
        codec, level = COMPRESSIONS[compression]
        schema = SHARD_SCHEMA.append(REFERENCE_MAP) if reference_maps else SHARD_SCHEMA
        extra = {b"bigearth.compression": compression.encode()}
        if reference_maps:
            extra[b"bigearth.reference_map"] = b'{"shape": [120, 120], "dtype": "uint16", "values": "CLC code"}'
        schema = schema.with_metadata({**SHARD_SCHEMA.metadata, **extra})
        self.reference_maps = reference_maps
        self.reference_map_missing: list[str] = []  # patch ids written without one (the archive has none)
        self._fs, self._path = fs, path
        self._temp = temp_name(path) if is_local(fs) else path
        self._file = fs.open(self._temp, "wb")
        self._writer = pq.ParquetWriter(
            self._file,
            schema,
            compression=codec,
            compression_level=level,
            use_dictionary=META_COLUMNS,
            write_statistics=META_COLUMNS,
            write_page_checksum=True,
            max_rows_per_page=PAGE_PAIRS,  # pairs per page, found through the page index: what a lookup reads
            write_page_index=True,
        )
        self._schema = schema
        self._buffer: list[dict[str, Any]] = []
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= ROW_GROUP_PAIRS:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self._schema))
            self.rows += len(self._buffer)
            self._buffer = []

    def close(self) -> None:
        """Finish the shard and put it at its path (a rename on a filesystem, after an fsync: a report written after
        this never points at a shard a crash could still cut short)."""
        self._flush()
        self._writer.close()
        if self._temp != self._path:
            self._file.flush()
            if hasattr(self._file, "fileno"):
                os.fsync(self._file.fileno())
        self._file.close()
        if self._temp != self._path:
            self._fs.mv(self._temp, self._path)  # a rename: the shard appears whole

    def abort(self) -> None:
        """Give the shard up (its task failed, or another copy of it finished first): on a filesystem nothing
        appears at its path and the temporary is deleted; on object storage the upload is abandoned (`discard`:
        s3fs aborts its multipart upload; a smaller one was never sent), so nothing replaces the object there."""
        if self._temp == self._path:
            with contextlib.suppress(Exception):
                self._file.discard()
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(Exception):
            self._file.close()
        if self._temp != self._path:
            with contextlib.suppress(FileNotFoundError):
                self._fs.rm_file(self._temp)


@dataclass(frozen=True)
class ShardEntry:
    """One shard file of a shard set, as its manifest lists it: `{"path", "rows", "split"}` in manifest.json."""

    path: str  # relative to the shard set's root
    split: str
    rows: int

    @classmethod
    def from_record(cls, record: Any, where: str) -> ShardEntry:
        """An entry of manifest.json's `shards` (`where`: the manifest, for the error)."""
        try:
            return cls(path=str(record["path"]), split=str(record["split"]), rows=int(record["rows"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ShardFormatError(
                f"{where}: shard entry {record!r} is not {{path, rows, split}} ({type(e).__name__}: {e})"
            ) from None

    def record(self) -> dict[str, Any]:
        """The entry as manifest.json holds it."""
        return {"path": self.path, "rows": self.rows, "split": self.split}

    @property
    def row_groups(self) -> tuple[int, ...]:
        """Rows of each Parquet row group: the writer cuts every shard into row groups of `ROW_GROUP_PAIRS` rows,
        the last one shorter (readers check it)."""
        full, rest = divmod(self.rows, ROW_GROUP_PAIRS)
        return (ROW_GROUP_PAIRS,) * full + ((rest,) if rest else ())


@dataclass
class Manifest:
    """`--out/manifest.json`: what a shard set holds and what ingest left out, with reasons. The rules readers
    follow (splits, label columns, nomenclatures) are `bigearth.shards.shardset.ShardSet`'s.

    The quarantine is counted here (`source.quarantine`: pairs, per kind, and its file) and listed in
    `quarantine.parquet` beside it (`quarantine_table`); manifests written before that list it in `quarantined`,
    which is read as it is. `quarantined_pairs` and `quarantine_table` answer for both."""

    pairs: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    shards: list[ShardEntry] = field(default_factory=list)
    quarantined: list[dict[str, str]] = field(default_factory=list)  # older manifests only: {patch_id, kind, reason}
    excluded: dict[str, int] = field(default_factory=dict)
    format_version: str = FORMAT_VERSION
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # entries given as the records manifest.json holds ({path, rows, split}) become typed ones
        self.shards = [s if isinstance(s, ShardEntry) else ShardEntry.from_record(s, "Manifest") for s in self.shards]

    def to_json(self) -> str:
        doc = {**self.__dict__, "shards": [s.record() for s in self.shards]}
        if not self.quarantined and "quarantine" in self.source:
            del doc["quarantined"]  # counted in source.quarantine, listed in its file
        return json.dumps(doc, indent=1, sort_keys=True)

    @property
    def quarantined_pairs(self) -> int:
        """How many pairs the ingest quarantined."""
        summary = self.source.get("quarantine")
        return int(summary["pairs"]) if summary else len(self.quarantined)

    @property
    def quarantine_kinds(self) -> dict[str, int]:
        """Quarantined pairs per kind."""
        summary = self.source.get("quarantine")
        if summary:
            return {str(k): int(n) for k, n in (summary.get("kinds") or {}).items()}
        kinds: dict[str, int] = {}
        for q in self.quarantined:
            kinds[q.get("kind", "")] = kinds.get(q.get("kind", ""), 0) + 1
        return kinds

    def quarantine_table(self, fs: AbstractFileSystem, root: str, limit: int | None = None) -> pa.Table:
        """The quarantined pairs (QUARANTINE_SCHEMA), by patch id; `limit`: the first ones only (read no further)."""
        summary = self.source.get("quarantine")
        if not summary:
            rows = [{k: q.get(k) for k in QUARANTINE_SCHEMA.names} for q in self.quarantined[:limit]]
            return pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)
        return _read_list(fs, join(root, summary["file"]), QUARANTINE_SCHEMA, limit)

    def reference_maps_missing(self, fs: AbstractFileSystem, root: str) -> list[str]:
        """Patch ids written without a reference map (the archive has none for them); [] when the shard set has no
        reference-map column."""
        maps = self.source.get("reference_maps") or {}
        if "file" not in maps:
            return list(maps.get("missing") or [])
        schema = pa.schema([("patch_id", pa.string())])
        return [str(p) for p in _read_list(fs, join(root, maps["file"]), schema, None)["patch_id"].to_pylist()]

    @classmethod
    def load(cls, fs: AbstractFileSystem, root: str) -> Manifest:
        path = join(root, MANIFEST)
        if not fs.exists(path):
            raise ShardFormatError(f"{path} not found: not a shard set written by `bigearth ingest`")
        try:
            doc = read_json(fs, path, "shard set's manifest")
        except RecordError as e:
            raise ShardFormatError(
                f"{e}; re-run the same `bigearth ingest` into {root} to write it again (finished shards are kept)"
            ) from None
        if doc.get("format_version") not in READABLE_VERSIONS:
            raise ShardFormatError(
                f"{path}: format version {doc.get('format_version')!r}, this code reads versions "
                f"{', '.join(READABLE_VERSIONS)}; re-run `bigearth ingest --archive ... --out {root} --overwrite` "
                "with this version to rewrite it"
            )
        doc["shards"] = [ShardEntry.from_record(s, path) for s in doc.get("shards") or []]
        return cls(**doc)

    def save(self, fs: AbstractFileSystem, root: str) -> None:
        write_bytes_atomic(fs, join(root, MANIFEST), self.to_json().encode())  # whole or not at all

    def shard_paths(self, root: str, split: str | None = None) -> list[str]:
        """Paths of the shard files (of one split), as listed: no check of the split (`ShardSet.paths` checks)."""
        return [join(root, s.path) for s in self.shards if split is None or s.split == split]


def _read_list(fs: AbstractFileSystem, path: str, schema: pa.Schema, limit: int | None) -> pa.Table:
    """A per-pair list beside the manifest (its columns of `schema`; `limit`: the first rows only)."""
    try:
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            if limit is None:
                return pf.read(columns=schema.names).cast(schema)
            for batch in pf.iter_batches(batch_size=max(limit, 1), columns=schema.names):
                return pa.Table.from_batches([batch]).slice(0, limit).cast(schema)  # the first `limit` rows
            return schema.empty_table()
    except FileNotFoundError:
        raise ShardFormatError(
            f"{path} not found: the manifest beside it names it; re-run the same `bigearth ingest` to write it again"
        ) from None
    except (OSError, pa.ArrowException) as e:
        why = f"not a readable Parquet file ({e})"
        raise ShardFormatError(f"{path}: {why}; re-run the same `bigearth ingest` to write it again") from None


def write_list(fs: AbstractFileSystem, path: str, tables: Any, schema: pa.Schema) -> int:
    """Write the per-pair list `tables` (an iterable of tables of `schema`'s columns) to `path` whole (zstd; one
    temporary file renamed, or one PUT), streamed a table at a time; returns its rows."""
    buffer = io.BytesIO()
    rows = 0
    with pq.ParquetWriter(buffer, schema, compression="zstd") as writer:
        for t in tables:
            if t.num_rows:
                writer.write_table(t.select(schema.names).cast(schema))
                rows += t.num_rows
    write_bytes_atomic(fs, path, buffer.getvalue())
    return rows


def open_for_reading(afs: Any, path: str) -> Any:
    """A shard file of pyarrow filesystem `afs` opened for whole row-group reads: memory-mapped on a local disk
    (the page cache's pages are read in place: ~20 % faster than copying them out first, bench/input_pipeline.py),
    else the filesystem's own input file. The ingest replaces a file by renaming a new one over it, so a map never
    sees its file shrink."""
    import pyarrow.fs as pafs

    if isinstance(afs, pafs.LocalFileSystem):
        return pa.memory_map(path)
    return afs.open_input_file(path)


def open_shard(source: Any, where: str, metadata: Any = None) -> pq.ParquetFile:
    """A shard file opened for reading with every page's checksum verified (files without checksums, format 1,
    are read as they are); a file that is not Parquet names itself in the error. `metadata`: its footer, when
    already read (saves a read per open)."""
    try:
        return pq.ParquetFile(source, metadata=metadata, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as e:
        raise ShardFormatError(f"{where}: not a readable shard file ({e})") from None


def read_row_group(pf: pq.ParquetFile, i: int, columns: list[str] | None, where: str) -> pa.Table:
    """Row group `i` of a shard; a corrupted page (checksum mismatch, cut-short file, bad compressed data) is a
    `ShardFormatError` that names the file and the row group, never data."""
    try:
        return pf.read_row_group(i, columns=columns, use_threads=False)
    except (OSError, pa.ArrowException) as e:
        raise ShardFormatError(
            f"{where}: row group {i} is corrupted ({e}); re-run the ingest of this shard set"
        ) from None
