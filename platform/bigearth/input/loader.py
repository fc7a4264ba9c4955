"""Training input, worker side: row groups of a shard set streamed straight into the process that trains.

    groups = row_groups("s3://bucket/shards", "train")               # the plan: one entry per Parquet row group
    for batch in RowGroupLoader(groups, 256, shuffle_buffer=2048, seed=(0, epoch)): ...
    row_groups(url, "train", subset=MetadataSubset(countries={"exclude": ["Portugal"]}))   # the rows it selects

    # in a Ray Train worker (datasets={"train": open_row_groups(...)}, DataConfig(datasets_to_split=[])):
    plan = plan_of(ray.train.get_dataset_shard("train"))               # once per run
    mine, limit = epoch_share(plan, epoch, seed, rank, world, shuffle=True, equal=True)
    for batch in RowGroupLoader(mine, 256, limit=limit, ...): ...
    groups, skip, rows = row_share(val_plan, rank, world)              # evaluation: every row exactly once
    for batch in RowGroupLoader(groups, 256, skip=skip, limit=rows): ...

Why not Ray Data's row path (`bigearth.input.raydata.open_split` -> `iter_torch`, still available and measured
beside this one in bench/input_pipeline.py): there, read tasks decompress into the object store and the trainer
copies each pair out of it again (one more full copy of 275 KB a pair) and each epoch starts a streaming execution
(~0.3 s to the first batch). Here, reader threads in the worker read, decompress and checksum-verify row groups (pyarrow
releases the GIL), a second thread gathers the shuffled rows straight from the Arrow buffers into the batch arrays
(the only copy), and the next epoch begins with a list already in memory. Ray Data still delivers the plan to every
worker, and remains the engine of ingest, evaluation, indexing and statistics.

Batches are those of `bigearth.shards.decode.decode_batch`:
`{"s1", "s2_10m", "s2_20m", "s2_60m", "labels", "patch_id"}`, and `mask` with `maps=True` (segmentation).
Shuffling is two-level: the row groups of every shard file are permuted together each epoch (seeded, the same
permutation on every worker, which then takes its share), and every batch draws its rows at random, in equal
shares, from a buffer of row groups holding `shuffle_buffer` rows. Memory is bounded by that buffer, the reads in
flight and `prefetch` ready batches, whatever the size of the archive.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from bigearth.core.bands import BANDS
from bigearth.core.storage import StorageOptions, arrow_filesystem, join
from bigearth.input.buffers import BatchBuffers
from bigearth.shards.decode import band_view, groups_for, label_matrix, map_targets, require_maps, to_torch
from bigearth.shards.format import (
    REFERENCE_MAP,
    ROW_GROUP_PAIRS,
    ShardFormatError,
    open_for_reading,
    open_shard,
    read_row_group,
)
from bigearth.shards.shardset import ShardSet, label_column
from bigearth.shards.subsets import (
    MetadataSubset,
    check_selected,
    check_values,
    group_positions,
    metadata_table,
    selected_rows,
)


@dataclass(frozen=True)
class RowGroup:
    """One Parquet row group of a shard: the unit of reading and of the first level of shuffling."""

    url: str  # the shard set (for the filesystem)
    path: str  # the shard file, as the filesystem of `url` names it
    index: int
    rows: int  # the rows the loader yields of it: all of them, or the selected ones
    selected: tuple[int, ...] | None = None  # a metadata subset's rows within the group (ascending); None = all
    total: int | None = None  # the group's rows in the file when a selection is given

    def __post_init__(self) -> None:
        if self.selected is not None and (len(self.selected) != self.rows or self.total is None):
            raise ValueError(f"{self.path}#{self.index}: {self.rows} rows but {len(self.selected)} selected")

    @property
    def file_rows(self) -> int:
        """The group's rows in the shard file (what the manifest says and the reader checks)."""
        return self.rows if self.total is None else self.total

    def item(self) -> dict[str, Any]:
        """As a Ray Dataset item; `selected` as text, "0,3,7" ("" for all rows: a group with none is never
        planned), one Arrow type in every block and safe in numpy's string arrays, whatever the selection."""
        selected = ",".join(str(i) for i in self.selected or ())
        return {
            "url": self.url,
            "path": self.path,
            "index": self.index,
            "rows": self.rows,
            "selected": selected,
            "total": self.file_rows,
        }

    @classmethod
    def of_item(cls, url: Any, path: Any, index: Any, rows: Any, selected: Any = "", total: Any = None) -> RowGroup:
        """Back from `item()`'s fields (as Ray hands them: numpy scalars and strings)."""
        picked = tuple(int(i) for i in str(selected).split(",")) if selected else None
        return cls(str(url), str(path), int(index), int(rows), picked, int(total) if picked else None)


def row_groups(
    shards: str, split: str | Sequence[str], storage: StorageOptions | None = None, subset: MetadataSubset | None = None
) -> list[RowGroup]:
    """The row groups of a split (several: a list) of a shard set, from the manifest alone
    (`ShardEntry.row_groups`; readers check them against the files). With an active `subset`, the selected rows of
    each group, from the metadata columns of the split's files (`select_rows`); groups with none are left out."""
    shard_set = ShardSet.open(shards, storage)
    entries = shard_set.files(split)  # an unknown split names the ones there are
    if subset is not None and subset.active:
        return select_rows(shards, shard_set, entries, split, subset, storage)
    return [RowGroup(shards, join(shard_set.root, e.path), i, n) for e in entries for i, n in enumerate(e.row_groups)]


def select_rows(
    shards: str,
    shard_set: ShardSet,
    entries: Sequence[Any],
    split: str | Sequence[str],
    subset: MetadataSubset,
    storage: StorageOptions | None = None,
) -> list[RowGroup]:
    """The row groups of `entries` with the rows `subset` selects (`bigearth.shards.subsets.selected_rows`: the
    metadata columns of the files only); whole groups stay plain, groups with none are left out."""
    files = _files(shard_set, entries)
    fs = arrow_filesystem(shards, storage)[0]
    return _selected(shards, files, selected_rows(fs, files, subset, _split_name(split)))


def subset_plans(
    shards: str, splits: Sequence[str], storage: StorageOptions | None = None, subset: MetadataSubset | None = None
) -> list[list[RowGroup]]:
    """The plans (`row_groups`) of splits a run reads together, e.g. training and validation. The countries of an
    active `subset` are checked against all of them at once (`check_values`: a leave-one-country-out run excludes
    a country its validation split may lack), each split's selection on its own (`EmptySubsetError`)."""
    if subset is None or not subset.active:
        return [row_groups(shards, split, storage) for split in splits]
    shard_set = ShardSet.open(shards, storage)
    fs = arrow_filesystem(shards, storage)[0]
    files = [_files(shard_set, shard_set.files(split)) for split in splits]
    tables = [metadata_table(fs, f) for f in files]
    keeps = [check_selected(subset, split, t, values=False) for split, t in zip(splits, tables, strict=True)]
    check_values(subset, ", ".join(splits), pa.concat_tables(tables))
    return [_selected(shards, f, group_positions(keep, f)) for f, keep in zip(files, keeps, strict=True)]


def _files(shard_set: ShardSet, entries: Sequence[Any]) -> list[tuple[str, tuple[int, ...]]]:
    return [(join(shard_set.root, e.path), tuple(e.row_groups)) for e in entries]


def _selected(
    shards: str, files: Sequence[tuple[str, Sequence[int]]], picked: Sequence[Sequence[np.ndarray]]
) -> list[RowGroup]:
    return [
        RowGroup(shards, path, i, n)
        if len(rows) == n
        else RowGroup(shards, path, i, len(rows), tuple(rows.tolist()), n)
        for (path, sizes), groups in zip(files, picked, strict=True)
        for i, (n, rows) in enumerate(zip(sizes, groups, strict=True))
        if len(rows)
    ]


def _split_name(split: str | Sequence[str]) -> str:
    return split if isinstance(split, str) else ", ".join(split)


def open_row_groups(
    shards: str, split: str | Sequence[str], storage: StorageOptions | None = None, subset: MetadataSubset | None = None
) -> Any:
    """The plan of a split as a Ray Dataset (one row per row group), to hand to Ray Train with
    `DataConfig(datasets_to_split=[])`: every worker receives the whole plan and takes its share with
    `epoch_share`, so every worker runs the same number of steps and nothing is dropped by the split."""
    return plan_dataset(row_groups(shards, split, storage, subset))


def plan_dataset(plan: Sequence[RowGroup]) -> Any:
    """A plan as a Ray Dataset (one row per row group, selections included)."""
    import ray

    return ray.data.from_items([g.item() for g in plan])


def plan_of(source: Any) -> list[RowGroup]:
    """The plan from `open_row_groups`' Dataset or a Ray Train dataset shard of it, in its original order."""
    return [RowGroup.of_item(**r) for r in source.iter_rows()]


def epoch_share(
    plan: Sequence[RowGroup],
    epoch: int,
    seed: int = 0,
    rank: int = 0,
    world: int = 1,
    *,
    shuffle: bool = True,
    equal: bool = True,
) -> tuple[list[RowGroup], int | None]:
    """This worker's row groups for an epoch and how many rows it may yield (`equal`: the same number on every
    worker, `n // world` of the plan's `n` rows, so data-parallel workers run the same number of steps and fewer
    than `world` rows of the epoch are left out; None = all of them).

    With `shuffle`, every worker permutes the plan's row groups with the same `(seed, epoch)` generator; the rows
    of that order are then cut into `world` contiguous ranges whose sizes differ by at most one row (as
    `row_share`), and this worker takes range `rank`: the shares are disjoint and cover the plan. A row group on
    the boundary of two ranges is split into two `RowGroup`s with disjoint `selected` rows (one without a
    selection gets one; `total` stays the file's rows, which the reader checks). Balancing rows and not row groups
    matters with a metadata subset, whose groups hold anywhere from 1 to all of their rows. Two workers sharing a
    boundary group each read (and decompress) the whole group and draw their own rows of it: at most `world - 1`
    extra row-group reads an epoch. `equal=False` (for evaluation and benchmarks) keeps every row."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside a world of {world}")
    order = np.random.default_rng([seed, epoch]).permutation(len(plan)) if shuffle else np.arange(len(plan))
    total = sum(g.rows for g in plan)
    start, stop = rank * total // world, (rank + 1) * total // world
    share: list[RowGroup] = []
    at = 0
    for i in order:
        g = plan[i]
        lo, hi = max(start - at, 0), min(stop - at, g.rows)
        if lo < hi:
            share.append(g if (lo, hi) == (0, g.rows) else _part(g, lo, hi))
        at += g.rows
        if at >= stop:
            break
    return share, total // world if equal and world > 1 else None


def _part(group: RowGroup, lo: int, hi: int) -> RowGroup:
    """Rows `lo:hi` of the rows `group` yields, as a row group of its own (a selection of the file's group)."""
    rows = group.selected if group.selected is not None else tuple(range(group.file_rows))
    return RowGroup(group.url, group.path, group.index, hi - lo, tuple(rows[lo:hi]), group.file_rows)


def row_share(plan: Sequence[RowGroup], rank: int = 0, world: int = 1) -> tuple[list[RowGroup], int, int]:
    """For evaluation: rows `[rank * n // world, (rank + 1) * n // world)` of the plan in its order, as (the row
    groups holding them, rows to skip in the first, rows to yield). Shares differ by at most one row, none is
    empty while the plan has at least `world` rows, nothing is dropped and nothing read twice."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside a world of {world}")
    total = sum(g.rows for g in plan)
    start, stop = rank * total // world, (rank + 1) * total // world
    groups: list[RowGroup] = []
    skip, at = 0, 0
    for g in plan:
        if at + g.rows > start and at < stop:
            if not groups:
                skip = start - at
            groups.append(g)
        at += g.rows
    return groups, skip, stop - start


class _Decoded:
    """A row group read and decompressed: zero-copy per-band views of its Arrow buffers, multi-hot labels, ids,
    and with `maps` the per-pixel targets of its reference maps (`where`: its shard set, for errors)."""

    def __init__(
        self,
        table: pa.Table,
        groups: dict[str, tuple[str, ...]],
        nomenclature: int,
        maps: bool = False,
        where: str = "",
    ) -> None:
        self.mask = map_targets(table, where) if maps else None
        if REFERENCE_MAP.name in table.column_names:  # decoded (or unused): not kept for the whole shuffle buffer
            table = table.drop_columns([REFERENCE_MAP.name])
        self.table = table  # keeps the buffers the views point into alive
        self.rows = table.num_rows
        self.bands: dict[str, np.ndarray] = {}
        for names in groups.values():
            for name in names:
                col = table.column(name)
                self.bands[name] = band_view(col.chunk(0) if col.num_chunks == 1 else col.combine_chunks(), name)
        self.labels = label_matrix(table, nomenclature)
        self.ids = table.column("patch_id").to_numpy()
        self.selected: np.ndarray | None = None  # the rows to draw from (a metadata subset's); None = all

    def order(self, rng: np.random.Generator | None, skip: int = 0) -> np.ndarray:
        """The rows to draw, in draw order: all (or the selected) rows, permuted by `rng`, else in order from `skip`."""
        rows = self.selected if self.selected is not None else np.arange(self.rows)
        return rng.permutation(rows) if rng is not None else rows[skip:]


class RowGroupLoader:
    """Torch batches from a list of row groups (see the module docstring). Iterate it once per epoch.

    `threads` reader threads keep up to `threads + 2` row groups in flight; one assembler thread fills batches
    into a queue of `prefetch`; the iterating thread only turns arrays into tensors (pinned and sent without
    blocking when `device` is CUDA). `limit` stops after that many rows; `drop_last` drops a short last batch;
    `maps` adds each pair's `mask` (a segmentation model's targets; shards without reference maps are an error)."""

    def __init__(
        self,
        groups: Sequence[RowGroup],
        batch_size: int = 256,
        *,
        bands: str | Sequence[str] = "all",
        nomenclature: int = 19,
        storage: StorageOptions | None = None,
        device: Any = None,
        shuffle_buffer: int = 0,
        seed: Any = None,
        limit: int | None = None,
        skip: int = 0,
        drop_last: bool = False,
        threads: int = 2,
        prefetch: int = 2,
        buffers: BatchBuffers | None = None,
        maps: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.groups, self.batch_size = list(groups), batch_size
        self.bands = groups_for(bands)
        self.nomenclature, self.storage, self.device = nomenclature, storage, device
        self.shuffle_buffer, self.seed, self.limit, self.drop_last = shuffle_buffer, seed, limit, drop_last
        if skip and shuffle_buffer:
            raise ValueError("skip is for unshuffled reading (evaluation shares from row_share)")
        self.skip = skip
        self.threads, self.prefetch = max(1, threads), max(1, prefetch)
        self._buffers = buffers or BatchBuffers(pinned=_is_cuda(device), keep=self.prefetch + 4)
        self.columns = ["patch_id", label_column(nomenclature), *(b for names in self.bands.values() for b in names)]
        self.maps = maps
        if maps:
            self.columns.append("reference_map")
        self._metadata: dict[str, Any] = {}  # footer of each file, read once per loader
        self._filesystems: dict[str, Any] = {}  # one pyarrow filesystem per shard set, made once per loader

    def __len__(self) -> int:
        """Batches per epoch."""
        rows = self._rows()
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    def _rows(self) -> int:
        """Rows this loader yields in an epoch."""
        rows = sum(g.rows for g in self.groups) - self.skip
        return min(rows, self.limit) if self.limit is not None else rows

    def _read(self, group: RowGroup) -> _Decoded:
        fs = self._filesystems.get(group.url)
        if fs is None:
            fs = self._filesystems[group.url] = arrow_filesystem(group.url, self.storage)[0]
        with open_for_reading(fs, group.path) as f:
            pf = open_shard(f, group.path, self._metadata.get(group.path))
            self._metadata[group.path] = pf.metadata
            if group.index >= pf.num_row_groups or pf.metadata.row_group(group.index).num_rows != group.file_rows:
                raise ShardFormatError(
                    f"{group.path}: expected row group {group.index} of {group.file_rows} rows as the manifest "
                    f"implies; the file has {pf.num_row_groups} row groups: re-run the ingest of this shard set"
                )
            if self.maps:
                require_maps(pf.schema_arrow.names, f"shard set {group.url} ({group.path})")
            table = read_row_group(pf, group.index, self.columns, group.path)
            d = _Decoded(table, self.bands, self.nomenclature, self.maps, f"shard set {group.url}")
            d.selected = np.asarray(group.selected, dtype=np.int64) if group.selected is not None else None
            return d

    def _batches(self, stop: threading.Event) -> Iterator[dict[str, np.ndarray]]:
        """The shuffle buffer is a set of `slots` row groups (enough for `shuffle_buffer` rows), each with its rows
        in a random order; every batch takes an equal share of its rows from each slot, and a slot that runs dry
        takes the next row group. Memory is bounded by the slots (plus the reads in flight), whatever the length
        of the epoch, and every batch mixes rows of `slots` different row groups. The slots fill one batch's
        worth at a time (the first batch waits for one batch of rows, not for a full buffer), driven by the rows
        read and never by timing, so a seed gives the same order every time."""
        rng = np.random.default_rng(self.seed)
        shuffle = self.shuffle_buffer > 0
        group_rows = max((g.rows for g in self.groups), default=ROW_GROUP_PAIRS)
        per_batch = -(-self.batch_size // group_rows)  # row groups one batch needs
        held = max((g.file_rows for g in self.groups), default=ROW_GROUP_PAIRS)  # a slot holds the whole group
        slots_max = max(per_batch, -(-self.shuffle_buffer // held)) if shuffle else per_batch
        todo = iter(self.groups)
        inflight: list[Future[_Decoded]] = []
        buffer: list[tuple[_Decoded, np.ndarray]] = []  # group, its rows not yet used (in draw order)
        left, skip = self._rows(), self.skip
        with ThreadPoolExecutor(self.threads, thread_name_prefix="bigearth-read") as pool:
            try:

                def top_up() -> None:  # reads in flight: enough to refill the slots, `threads + 2` ahead
                    while len(inflight) < self.threads + 2 + max(0, slots_max - len(buffer)):
                        group = next(todo, None)
                        if group is None:
                            return
                        inflight.append(pool.submit(self._read, group))

                def take_read() -> None:
                    nonlocal skip
                    d = inflight.pop(0).result()
                    buffer.append((d, d.order(rng if shuffle else None, skip)))
                    skip = 0

                top_up()
                draw = 0
                while left > 0 and not stop.is_set():
                    draw += 1
                    want = min(left, self.batch_size)
                    while inflight and (
                        len(buffer) < min(slots_max, draw * per_batch) or sum(len(r) for _, r in buffer) < want
                    ):
                        take_read()
                    top_up()
                    sizes = [len(r) for _, r in buffer]
                    n = min(self.batch_size, sum(sizes), left)
                    if n == 0 or (self.drop_last and n < self.batch_size):
                        return
                    counts = _equal_shares(sizes, n, rng) if shuffle else _in_order(sizes, n)
                    yield self._assemble(buffer, counts, n)
                    buffer = [(d, r[k:]) for (d, r), k in zip(buffer, counts, strict=True) if len(r) > k]
                    left -= n
            finally:
                for f in inflight:
                    f.cancel()

    def _assemble(self, buffer: list[tuple[_Decoded, np.ndarray]], counts: Any, n: int) -> dict[str, Any]:
        """Gather the drawn rows into the batch arrays: one copy, Arrow buffer -> batch. Each group's array is
        allocated band-major (`[C, B, H, W]` in memory) so that every band's rows land in contiguous memory (numpy
        gathers ~4x faster into contiguous destinations), and handed out as its `[B, C, H, W]` view. The arrays come
        from `self._buffers` (recycled or pinned, see `BatchBuffers`), not from fresh pages each batch."""
        out: dict[str, Any] = {}
        band_major: dict[str, np.ndarray] = {}
        for group, names in self.bands.items():
            b = BANDS[names[0]]
            array, handed = self._buffers.take((len(names), n, b.size, b.size), b.dtype, pool=n == self.batch_size)
            band_major[group] = array
            out[group] = handed.permute(1, 0, 2, 3) if handed is not None else array.transpose(1, 0, 2, 3)
        first = buffer[0][0]
        out["labels"] = np.empty((n, first.labels.shape[1]), dtype=np.float32)
        out["patch_id"] = np.empty(n, dtype=object)
        mask: np.ndarray | None = None
        if first.mask is not None:  # from the pool too (pinned on CUDA), as the bands
            mask, handed = self._buffers.take((n, *first.mask.shape[1:]), np.uint8, pool=n == self.batch_size)
            out["mask"] = handed if handed is not None else mask
        pos = 0
        for (d, rows), k in zip(buffer, counts, strict=True):
            if not k:
                continue
            take = rows[:k]
            for group, names in self.bands.items():
                dest = band_major[group]
                for c, name in enumerate(names):
                    np.take(d.bands[name], take, axis=0, out=dest[c, pos : pos + k], mode="clip")
            out["labels"][pos : pos + k] = d.labels[take]
            out["patch_id"][pos : pos + k] = d.ids[take]
            if d.mask is not None and mask is not None:
                np.take(d.mask, take, axis=0, out=mask[pos : pos + k], mode="clip")
            pos += k
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        ready: queue.Queue[Any] = queue.Queue(self.prefetch)
        stop = threading.Event()
        done = object()

        def produce() -> None:
            try:
                for batch in self._batches(stop):
                    while not stop.is_set():
                        try:
                            ready.put(batch, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                ready.put(done)
            except BaseException as e:  # handed to the iterating thread and raised there
                ready.put(e)

        worker = threading.Thread(target=produce, name="bigearth-assemble", daemon=True)
        worker.start()
        try:
            while True:
                item = ready.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield to_torch(item, self.device)
        finally:
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                with contextlib.suppress(queue.Empty):
                    ready.get(timeout=0.05)
            worker.join()


def _is_cuda(device: Any) -> bool:
    if device is None:
        return False
    import torch

    return torch.device(device).type == "cuda"


def _equal_shares(sizes: Sequence[int], n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` rows taken as evenly as possible from groups holding `sizes` rows (the remainder to random groups; a
    group short of its share gives the rest to the others)."""
    counts = np.zeros(len(sizes), dtype=np.int64)
    room = np.asarray(sizes, dtype=np.int64)
    while n > 0:
        active = np.flatnonzero(room > counts)
        if not len(active):
            break
        share, extra = divmod(n, len(active))
        add = np.full(len(active), share, dtype=np.int64)
        add[rng.permutation(len(active))[:extra]] += 1
        add = np.minimum(add, room[active] - counts[active])
        counts[active] += add
        n -= int(add.sum())
    return counts


def _in_order(sizes: Sequence[int], n: int) -> np.ndarray:
    """Take `n` rows from the buffered groups front to back (no shuffling)."""
    counts = np.zeros(len(sizes), dtype=np.int64)
    for i, size in enumerate(sizes):
        counts[i] = min(size, n)
        n -= int(counts[i])
        if not n:
            break
    return counts
