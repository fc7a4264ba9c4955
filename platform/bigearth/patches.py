"""Random access to single pairs of a shard set by patch id (for the service: patch metadata, quicklooks,
classification of archived pairs). Training never uses this: it streams whole shards."""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow as pa

from bigearth.archive.names import PatchNameError, check_safe_id
from bigearth.shards import META_COLUMNS, Manifest, open_shard, read_row_group
from bigearth.storage import StorageOptions, arrow_filesystem, join, open_fs


class UnknownPatch(KeyError):
    """No pair with this patch id in the shard set."""

    def __str__(self) -> str:
        return str(self.args[0])


class PatchStore:
    """Patch id -> (shard file, row group, row), built from the `patch_id` column of every shard at start-up.

    A lookup reads one row group of the needed columns only; the last few row groups read stay cached.
    """

    def __init__(self, shards: str, storage: StorageOptions | None = None, cache_row_groups: int = 4) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.shards, self.storage = shards, storage
        fs, root = open_fs(shards, storage)
        manifest = Manifest.load(fs, root)
        self._paths = [join(root, s["path"]) for s in manifest.shards]
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
                split = self._by_split.setdefault(manifest.shards[file_no]["split"], [])
                for rg, _, names in groups:
                    for row, pid in enumerate(names):
                        self._where[pid] = (file_no, rg, row)
                    split.extend(names)
        self._cache: OrderedDict[tuple[int, int, tuple[str, ...]], pa.Table] = OrderedDict()
        self._cache_size = cache_row_groups
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._where)

    def ids(self, split: str | None = None, offset: int = 0, limit: int = 100) -> list[str]:
        """Patch ids in shard order (of one split, or all), a page at a time."""
        if split is not None and split not in self._by_split:
            raise KeyError(f"no split {split!r}; the shard set has {sorted(self._by_split)}")
        if split:
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
            raise UnknownPatch(f"patch {patch_id!r} is not in the shard set {self.shards}")
        return self._where[patch_id]

    def row(self, patch_id: str, columns: list[str]) -> pa.Table:
        """One-row table of `columns` for a pair."""
        file_no, rg, row = self.locate(patch_id)
        key = (file_no, rg, tuple(columns))
        with self._lock:
            table = self._cache.get(key)
            if table is not None:
                self._cache.move_to_end(key)
        if table is None:
            path = self._paths[file_no]
            with self._afs.open_input_file(path) as f:
                table = read_row_group(open_shard(f, path), rg, columns, path)
            with self._lock:
                self._cache[key] = table
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return table.slice(row, 1)

    def metadata(self, patch_id: str) -> dict[str, Any]:
        """The pair's metadata columns (no pixels) plus the patch centre as `location`."""
        from bigearth.retrieval.schema import centres_lonlat

        meta = self.row(patch_id, [c for c in META_COLUMNS]).to_pylist()[0]
        lon, lat = centres_lonlat(np.array([meta["epsg"]]), np.array([meta["ulx"]]), np.array([meta["uly"]]))
        meta["location"] = {"lat": round(float(lat[0]), 6), "lon": round(float(lon[0]), 6)}
        return meta

    def arrays(self, patch_id: str, groups: dict[str, tuple[str, ...]]) -> dict[str, np.ndarray]:
        """The pair's band groups as `[1, C, H, W]` arrays (the batch layout of `bigearth.data.decode_batch`)."""
        from bigearth.data import decode_batch

        columns = ["patch_id", "labels", *(b for names in groups.values() for b in names)]
        batch = decode_batch(self.row(patch_id, columns), groups)
        return {g: batch[g] for g in groups}
