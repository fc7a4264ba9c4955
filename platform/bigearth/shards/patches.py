"""Random access to single pairs of a shard set by patch id (for the service: patch metadata, quicklooks,
classification of archived pairs). Training never uses this: it streams whole shards."""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from bigearth.archive.names import PatchNameError, check_safe_id
from bigearth.core.storage import StorageOptions, arrow_filesystem, join
from bigearth.shards.format import META_COLUMNS, ShardFormatError, open_shard, read_row_group
from bigearth.shards.pages import (
    CorruptPage,
    Unsupported,
    offset_index_locations,
    page_locations,
    read_footer,
    read_value,
)
from bigearth.shards.shardset import ShardSet


class UnknownPatch(KeyError):
    """No pair with this patch id in the shard set."""

    def __str__(self) -> str:
        return str(self.args[0])


#: What the PatchStore keeps of what it read (pages' locations, band values of recent pairs, metadata row groups).
CACHE_BYTES = 64 * 1024 * 1024


@dataclass
class _Layout:
    """What a lookup needs of one shard file's footer: rows per row group, the fixed-size (band) columns and
    where each row group's offset index is (None for a file without a page index)."""

    size: int
    rows: list[int]
    fixed: dict[str, tuple[int, int, int, str]]  # column -> (index, bytes per value, max definition level, codec)
    offsets: list[list[tuple[int, int] | None]] | None


class _Opener:
    """A shard file opened on first use (`f()`), closed on exit: a lookup the cache answers opens nothing."""

    def __init__(self, afs: Any, path: str) -> None:
        self._afs, self._path = afs, path
        self._file: Any = None

    def __call__(self) -> Any:
        if self._file is None:
            self._file = self._afs.open_input_file(self._path)
        return self._file

    def __enter__(self) -> _Opener:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()


class PatchStore:
    """Patch id -> (shard file, row group, row), built from the `patch_id` column of every shard at start-up.

    A lookup reads one row: each band column's page of that pair, found through the file's page index (shards
    written before it had one: the row group of the needed columns); metadata columns (small) by row group. What
    was read stays in an LRU cache of at most `cache_bytes` bytes.
    """

    def __init__(self, shards: str, storage: StorageOptions | None = None, cache_bytes: int = CACHE_BYTES) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.shards, self.storage = shards, storage
        self._set = ShardSet.open(shards, storage)
        entries = self._set.entries
        self._paths = [join(self._set.root, e.path) for e in entries]
        self._by_split: dict[str, list[str]] = {}
        self._afs, _ = arrow_filesystem(shards, storage)

        def ids(path: str) -> list[tuple[int, int, list[str]]]:
            with self._afs.open_input_file(path) as f:
                pf = open_shard(f, path)
                return [
                    (rg, pf.metadata.row_group(rg).num_rows, pf.read_row_group(rg, ["patch_id"]).column(0).to_pylist())
                    for rg in range(pf.num_row_groups)
                ]

        self._where: dict[str, tuple[int, int, int]] = {}
        with ThreadPoolExecutor(8) as pool:
            for file_no, groups in enumerate(pool.map(ids, self._paths)):
                split = self._by_split.setdefault(entries[file_no].split, [])
                for rg, _, names in groups:
                    for row, pid in enumerate(names):
                        self._where[pid] = (file_no, rg, row)
                    split.extend(names)
        self._cache: OrderedDict[tuple[Any, ...], tuple[Any, int]] = OrderedDict()
        self.cache_bytes, self._cached = cache_bytes, 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._where)

    def ids(self, split: str | None = None, offset: int = 0, limit: int = 100) -> list[str]:
        """Patch ids in shard order (of one split, or all), a page at a time."""
        if split is not None:
            self._set.files(split)  # an unknown split: `UnknownSplit` (a KeyError) naming the ones there are
            return self._by_split[split][offset : offset + limit]
        return list(itertools.islice(itertools.chain.from_iterable(self._by_split.values()), offset, offset + limit))

    def splits(self) -> dict[str, int]:
        return {k: len(v) for k, v in self._by_split.items()}

    def __contains__(self, patch_id: str) -> bool:
        return patch_id in self._where

    def locate(self, patch_id: str) -> tuple[int, int, int]:
        """Validate the id (before it is used anywhere) and find its row; UnknownPatch if absent."""
        try:
            check_safe_id(patch_id)
        except PatchNameError as e:
            raise ValueError(str(e)) from None
        if patch_id not in self._where:
            raise UnknownPatch(f"patch {patch_id!r} is not in the shard set")  # its URL is no caller's business
        return self._where[patch_id]

    # ---- the byte-sized cache
    def _cached_get(self, key: tuple[Any, ...]) -> Any:
        with self._lock:
            hit = self._cache.get(key)
            if hit is None:
                return None
            self._cache.move_to_end(key)
            return hit[0]

    def _cache_put(self, key: tuple[Any, ...], value: Any, size: int) -> Any:
        with self._lock:
            if key in self._cache:
                self._cached -= self._cache.pop(key)[1]
            if size <= self.cache_bytes:
                self._cache[key] = (value, size)
                self._cached += size
            while self._cached > self.cache_bytes:
                self._cached -= self._cache.popitem(last=False)[1][1]
        return value

    def cached_bytes(self) -> int:
        """What the cache holds now, in bytes (at most `cache_bytes`)."""
        return self._cached

    # ---- reads
    def row(self, patch_id: str, columns: list[str]) -> pa.Table:
        """One-row table of `columns` for a pair (the file is opened only when the cache misses)."""
        file_no, rg, row = self.locate(patch_id)
        path = self._paths[file_no]
        with _Opener(self._afs, path) as f:
            layout = self._layout(file_no, f)
            arrays: dict[str, Any] = {}
            pixels = [c for c in columns if c in layout.fixed]
            if pixels and layout.offsets is not None:
                try:
                    for c in pixels:
                        arrays[c] = self._value(file_no, f, layout, rg, row, c)
                except Unsupported:
                    arrays = {}
            rest = [c for c in columns if c not in arrays]
            if rest:
                key = ("group", file_no, rg, tuple(rest))
                table = self._cached_get(key)
                if table is None:
                    table = read_row_group(open_shard(f(), path), rg, rest, path)
                    table = self._cache_put(key, table, table.nbytes)
                arrays.update(zip(rest, table.slice(row, 1).columns, strict=True))
        return pa.table({c: arrays[c] for c in columns})

    def has_pixels(self, patch_id: str, column: str) -> bool:
        """Whether the shard of a pair has the fixed-size column `column` (a band, or the optional `reference_map`
        of an ingest with reference maps)."""
        file_no, _, _ = self.locate(patch_id)
        with _Opener(self._afs, self._paths[file_no]) as f:
            return column in self._layout(file_no, f).fixed

    def _layout(self, file_no: int, f: _Opener) -> _Layout:
        key = ("layout", file_no)
        layout = self._cached_get(key)
        if layout is not None:
            return layout  # type: ignore[no-any-return]
        path = self._paths[file_no]
        meta = open_shard(f(), path).metadata
        schema = meta.schema.to_arrow_schema()
        fixed = {}
        for i, field in enumerate(schema):
            if pa.types.is_fixed_size_binary(field.type) and meta.num_row_groups:
                compression = meta.row_group(0).column(i).compression
                fixed[field.name] = (i, field.type.byte_width, meta.schema.column(i).max_definition_level, compression)
        offsets = None
        if meta.num_row_groups and any(meta.row_group(0).column(i).has_offset_index for i, *_ in fixed.values()):
            try:
                offsets = offset_index_locations(read_footer(f().read_at, f().size()))
            except CorruptPage as e:
                raise ShardFormatError(f"{path}: {e}; re-run the ingest of this shard set") from None
        rows = [meta.row_group(rg).num_rows for rg in range(meta.num_row_groups)]
        layout = _Layout(f().size(), rows, fixed, offsets)
        return self._cache_put(key, layout, 1024 + 64 * len(fixed) * (1 + len(rows)))  # type: ignore[no-any-return]

    def _value(self, file_no: int, f: _Opener, layout: _Layout, rg: int, row: int, column: str) -> pa.Array:
        """One band value of one row, read from its page."""
        path = self._paths[file_no]
        index, width, max_def, compression = layout.fixed[column]
        key = ("value", file_no, rg, row, column)
        value = self._cached_get(key)
        if value is None:
            try:
                pages = self._cached_get(("pages", file_no, rg, index))
                if pages is None:
                    where = layout.offsets[rg][index] if layout.offsets and rg < len(layout.offsets) else None
                    if where is None:
                        raise Unsupported("no offset index")
                    pages = page_locations(f().read_at(where[1], where[0]))
                    self._cache_put(("pages", file_no, rg, index), pages, 64 + 48 * len(pages))
                got = read_value(f().read_at, compression, pages, layout.rows[rg], row, width, max_def)
            except CorruptPage as e:
                raise ShardFormatError(
                    f"{path}: row group {rg}, column {column}: {e}; re-run the ingest of this shard set"
                ) from None
            value = self._cache_put(key, pa.array([got], pa.binary(width)), width)
        return value  # type: ignore[no-any-return]

    def metadata(self, patch_id: str) -> dict[str, Any]:
        """The pair's metadata columns (no pixels) plus the patch centre as `location`."""
        from bigearth.archive.geo import centres_lonlat

        meta = self.row(patch_id, [c for c in META_COLUMNS]).to_pylist()[0]
        lon, lat = centres_lonlat(np.array([meta["epsg"]]), np.array([meta["ulx"]]), np.array([meta["uly"]]))
        meta["location"] = {"lat": round(float(lat[0]), 6), "lon": round(float(lon[0]), 6)}
        return meta

    def arrays(self, patch_id: str, groups: dict[str, tuple[str, ...]]) -> dict[str, np.ndarray]:
        """The pair's band groups as `[1, C, H, W]` arrays (the batch layout of
        `bigearth.shards.decode.decode_batch`)."""
        from bigearth.shards.decode import decode_batch

        columns = ["patch_id", "labels", *(b for names in groups.values() for b in names)]
        batch = decode_batch(self.row(patch_id, columns), groups)
        return {g: batch[g] for g in groups}
