"""The shard format: Parquet files of ~1,000 pairs, zstd, one row per pair, every band raw at native size.

See docs/data-format.md. Band columns hold the little-endian array bytes in row-major order, bit-exact with the
GeoTIFF; their shapes and dtypes, and the format version, are in each file's schema metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from bigearth.bands import ALL_BANDS
from bigearth.storage import join

FORMAT_VERSION = "1"
MANIFEST = "manifest.json"
ROW_GROUP_PAIRS = 128  # rows per Parquet row group: bounds writer memory and lets readers stream

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
        *[(b.name, pa.binary()) for b in ALL_BANDS],
    ],
    metadata={k.encode(): v.encode() for k, v in SCHEMA_METADATA.items()},
)
META_COLUMNS = [f.name for f in SHARD_SCHEMA if f.name not in {b.name for b in ALL_BANDS}]


class ShardFormatError(ValueError):
    """A shard set or shard file is not in the expected format."""


class ShardWriter:
    """Streams rows into one Parquet shard, a row group at a time."""

    def __init__(self, fs: AbstractFileSystem, path: str, compression_level: int = 3) -> None:
        self._file = fs.open(path, "wb")
        self._writer = pq.ParquetWriter(
            self._file,
            SHARD_SCHEMA,
            compression="zstd",
            compression_level=compression_level,
            use_dictionary=META_COLUMNS,
            write_statistics=META_COLUMNS,
        )
        self._buffer: list[dict[str, Any]] = []
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= ROW_GROUP_PAIRS:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=SHARD_SCHEMA))
            self.rows += len(self._buffer)
            self._buffer = []

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self._file.close()


@dataclass
class Manifest:
    """`--out/manifest.json`: what a shard set holds and what ingest left out, with reasons."""

    pairs: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    shards: list[dict[str, Any]] = field(default_factory=list)  # {path (relative), rows, split}
    quarantined: list[dict[str, str]] = field(default_factory=list)  # {patch_id, kind, reason}
    excluded: dict[str, int] = field(default_factory=dict)
    format_version: str = FORMAT_VERSION
    source: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, sort_keys=True)

    @classmethod
    def load(cls, fs: AbstractFileSystem, root: str) -> Manifest:
        path = join(root, MANIFEST)
        if not fs.exists(path):
            raise ShardFormatError(f"{path} not found: not a shard set written by `bigearth ingest`")
        doc = json.loads(fs.cat(path))
        if doc.get("format_version") != FORMAT_VERSION:
            raise ShardFormatError(
                f"{path}: format version {doc.get('format_version')!r}, this code reads "
                f"{FORMAT_VERSION!r}; re-run the ingest"
            )
        return cls(**doc)

    def save(self, fs: AbstractFileSystem, root: str) -> None:
        with fs.open(join(root, MANIFEST), "w") as f:
            f.write(self.to_json())

    def shard_paths(self, root: str, split: str | None = None) -> list[str]:
        return [join(root, s["path"]) for s in self.shards if split is None or s["split"] == split]
