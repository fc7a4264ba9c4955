"""Training input: a split of a shard set as a Ray Dataset of decoded batches.

    ds = open_split("s3://bucket/shards", "train")             # ray.data.Dataset, files shuffled
    for batch in iter_torch(ds, 256, local_shuffle_buffer_size=2048): ...
    # or, in a Ray Train worker: iter_torch(ray.train.get_dataset_shard("train"), 256)

A batch is `{"s1": f32[B,2,120,120], "s2_10m": u16[B,4,120,120], "s2_20m": u16[B,6,60,60],
"s2_60m": u16[B,2,20,20], "labels": f32[B,19 or 43], "patch_id": str[B]}` (groups outside the band set left out).
Decoding views the Parquet binary buffers without copying and copies each band once into the batch: the CPU only
moves bytes; normalisation and resampling happen on the device in `bigearth.models.stem.InputStem`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bigearth.core.bands import GROUPS
from bigearth.core.storage import StorageOptions, arrow_filesystem, join
from bigearth.shards.decode import (  # noqa: F401  (re-exported: the decode step's names, as readers know them)
    BandSet,
    band_view,
    decode_batch,
    groups_for,
    label_matrix,
    to_torch,
)
from bigearth.shards.format import META_COLUMNS, ShardFormatError, open_shard, read_row_group
from bigearth.shards.shardset import ShardSet, nomenclature_of


def read_shards(
    batch: dict[str, np.ndarray],
    columns: list[str],
    url: str,
    storage: StorageOptions | None,
    decode_groups: dict[str, tuple[str, ...]] | None = None,
    nomenclature: int = 19,
) -> Any:
    """Ray Data UDF: shard paths in, one Arrow table per Parquet row group out (or decoded numpy batches)."""
    for path in batch["path"]:
        yield from shard_tables({"path": str(path)}, columns, url, storage, decode_groups, nomenclature)


def shard_tables(
    source: dict[str, Any],
    columns: list[str],
    url: str,
    storage: StorageOptions | None,
    decode_groups: dict[str, tuple[str, ...]] | None = None,
    nomenclature: int = 19,
) -> Any:
    """One shard file (`source["path"]`, as `split_files` lists it) as one Arrow table per Parquet row group (or
    decoded numpy batches): the read of every executor."""
    fs, _ = arrow_filesystem(url, storage)
    path = str(source["path"])
    with fs.open_input_file(path) as f:
        pf = open_shard(f, path)
        for i in range(pf.num_row_groups):
            table = read_row_group(pf, i, columns, path)
            yield table if decode_groups is None else decode_batch(table, decode_groups, nomenclature)


def split_files(
    shards: str,
    split: str | Sequence[str] | None = "train",
    *,
    bands: str | Sequence[str] = "all",
    nomenclature: int = 19,
    storage: StorageOptions | None = None,
    extra_columns: Sequence[str] = (),
) -> tuple[list[dict[str, Any]], list[str]]:
    """The shard files of a split (several: a list; None = every split) as `{"path", "rows"}` items, and the
    columns a read needs (`patch_id`, the labels, the bands of `bands`, `extra_columns`). No Ray."""
    shard_set = ShardSet.open(shards, storage)
    files = shard_set.files(split)  # an unknown split names the ones there are
    labels = shard_set.label_column(nomenclature)
    groups = groups_for(bands)
    unknown = sorted(set(extra_columns) - set(META_COLUMNS))
    if unknown:
        raise ShardFormatError(f"extra_columns: unknown column(s) {unknown}; expected some of {META_COLUMNS}")
    base = ["patch_id", labels, *(b for g in groups.values() for b in g)]
    columns = base + [c for c in extra_columns if c not in base]
    return [{"path": join(shard_set.root, e.path), "rows": e.rows} for e in files], columns


def open_split(
    shards: str,
    split: str | Sequence[str] | None = "train",
    *,
    bands: str | Sequence[str] = "all",
    nomenclature: int = 19,
    shuffle_files: bool = True,
    storage: StorageOptions | None = None,
    decode: bool = False,
    extra_columns: Sequence[str] = (),
) -> Any:
    """A split (several: a list; None = every split) of a shard set as a Ray Dataset.

    One block per shard file (so `shuffle_files` randomises the file order every epoch, and Ray Train splits
    files across workers); each read task streams its file row group by row group and reads only the columns the
    band set needs. By default rows stay Arrow and `iter_torch` decodes them in its collate step (zero-copy views
    of the Arrow buffers, one copy into the batch); `decode=True` yields the numpy batch dict instead, for
    consumers other than torch. `extra_columns` adds metadata columns (e.g. `country`) to the Arrow rows.
    """
    import ray

    items, columns = split_files(
        shards, split, bands=bands, nomenclature=nomenclature, storage=storage, extra_columns=extra_columns
    )
    groups = groups_for(bands)
    ds: Any = ray.data.from_items(items, override_num_blocks=len(items))
    if shuffle_files:
        ds = ds.randomize_block_order()
        # the files in that order: by default Ray Data yields blocks as their read tasks finish, and with as many
        # CPUs as files the same (smallest) file comes first every epoch, whatever the shuffle
        ds.context.execution_options.preserve_order = True
    kwargs: dict[str, Any] = {"columns": columns, "url": shards, "storage": storage}
    if decode:
        kwargs.update(decode_groups=groups, nomenclature=nomenclature)
    return ds.map_batches(read_shards, batch_size=1, batch_format="numpy", fn_kwargs=kwargs)


def _collate_class() -> type:
    from ray.data.collate_fn import ArrowBatchCollateFn

    class TorchCollate(ArrowBatchCollateFn):  # type: ignore[misc]
        """Ray collate: raw Arrow rows of a shard -> the platform's batch dict as tensors."""

        def __init__(self, groups: dict[str, tuple[str, ...]] | None, nomenclature: int | None, device: Any) -> None:
            self.groups, self.nomenclature, self.device = groups, nomenclature, device

        def __call__(self, table: pa.Table) -> dict[str, Any]:  # type: ignore[override]
            nomenclature = self.nomenclature or nomenclature_of(table.column_names)
            return to_torch(decode_batch(table, self.groups or _groups_in(table), nomenclature), self.device)

    return TorchCollate


def _groups_in(table: pa.Table) -> dict[str, tuple[str, ...]]:
    cols = set(table.column_names)
    return {g: names for g, names in GROUPS.items() if set(names) <= cols}


def iter_torch(
    dataset: Any,
    batch_size: int = 256,
    *,
    bands: str | None = None,
    nomenclature: int | None = None,
    device: Any = None,
    local_shuffle_buffer_size: int | None = None,
    drop_last: bool = False,
    **kwargs: Any,
) -> Any:
    """Torch batches from `open_split(decode=False)` (a Dataset or a Ray Train dataset shard), decoded in the
    collate step. `bands` and `nomenclature` default to what the rows carry (as chosen in `open_split`)."""
    collate = _collate_class()(groups_for(bands) if bands else None, nomenclature, device)
    return dataset.iter_torch_batches(
        batch_size=batch_size,
        collate_fn=collate,
        drop_last=drop_last,
        local_shuffle_buffer_size=local_shuffle_buffer_size,
        **kwargs,
    )


def read_columns(
    shards: str,
    columns: Sequence[str],
    split: str | Sequence[str] | None = None,
    storage: StorageOptions | None = None,
    threads: int = 8,
) -> pa.Table:
    """Metadata columns (no pixels) of a split of a shard set as one Arrow table, read concurrently; for label
    matrices and lookups, not for training."""
    from concurrent.futures import ThreadPoolExecutor

    paths = ShardSet.open(shards, storage).paths(split)  # an unknown split names the ones there are
    afs, _ = arrow_filesystem(shards, storage)

    def one(path: str) -> pa.Table:
        with afs.open_input_file(path) as f:
            return pq.read_table(f, columns=list(columns))

    with ThreadPoolExecutor(threads) as pool:
        tables = list(pool.map(one, paths))
    return pa.concat_tables(tables)
