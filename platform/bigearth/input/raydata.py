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
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bigearth.core import labels as lab
from bigearth.core.bands import BAND_SETS, BANDS, GROUPS
from bigearth.core.storage import StorageOptions, arrow_filesystem, join
from bigearth.shards.format import META_COLUMNS, ShardFormatError, open_shard, read_row_group
from bigearth.shards.shardset import ShardSet, label_column, missing_labels, nomenclature_of

BandSet = Literal["all", "s1", "s2-10", "s2-12", "s1s2-10", "s1s2-12"]


def groups_for(bands: str | Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The batch groups (and their bands) a band set or band list needs; 'all' = every band."""
    if isinstance(bands, str):
        if bands == "all":
            return dict(GROUPS)
        if bands not in BAND_SETS:
            raise ValueError(f"unknown band set {bands!r}; expected one of {['all', *BAND_SETS]}")
        wanted = set(BAND_SETS[bands])
    else:
        wanted = set(bands)
    return {g: names for g, names in GROUPS.items() if wanted & set(names)}


def _chunk_bytes(arr: pa.Array, name: str, nbytes: int) -> np.ndarray:
    """`[rows, nbytes]` uint8 view of one chunk of a band column (zero-copy): fixed-size binary (format 2), or
    binary whose values must all have `nbytes` bytes (format 1)."""
    if arr.null_count:
        raise ShardFormatError(f"band column {name}: {arr.null_count} null value(s)")
    n = len(arr)
    if pa.types.is_fixed_size_binary(arr.type):
        if arr.type.byte_width != nbytes:
            raise ShardFormatError(f"band column {name}: values of {arr.type.byte_width} bytes, expected {nbytes}")
        data = arr.buffers()[1]
        return np.frombuffer(data, dtype=np.uint8, count=n * nbytes, offset=arr.offset * nbytes).reshape(n, nbytes)
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=n + 1, offset=arr.offset * 4)
    sizes = np.diff(offsets)
    if n and not (sizes == nbytes).all():
        bad = int(np.flatnonzero(sizes != nbytes)[0])
        raise ShardFormatError(f"band column {name}: row {bad} holds {int(sizes[bad])} bytes, expected {nbytes}")
    return np.frombuffer(data_buf, dtype=np.uint8, count=n * nbytes, offset=int(offsets[0])).reshape(n, nbytes)


def _labels_multi_hot(col: pa.ChunkedArray, nomenclature: int) -> np.ndarray:
    """Multi-hot `[rows, 19|43]` from a list<string> column, vectorised (no per-row Python)."""
    names = lab.class_names(nomenclature)  # type: ignore[arg-type]
    out = np.zeros((len(col), len(names)), dtype=np.float32)
    row0 = 0
    for chunk in col.chunks:
        flat = chunk.flatten()
        index = pc.index_in(flat, value_set=pa.array(names)).to_numpy(zero_copy_only=False)
        if flat.null_count or np.isnan(index.astype(np.float64)).any():
            unknown = sorted(
                set(pc.filter(flat, pc.is_null(pc.index_in(flat, value_set=pa.array(names)))).to_pylist()) - {None}
            )
            raise lab.UnknownLabelError(f"unknown {nomenclature}-class label(s) {unknown}")
        rows = np.repeat(np.arange(len(chunk)), pc.list_value_length(chunk).fill_null(0).to_numpy()) + row0
        out[rows, index.astype(np.int64)] = 1.0
        row0 += len(chunk)
    return out


def decode_batch(
    table: pa.Table, groups: dict[str, tuple[str, ...]] | None = None, nomenclature: int = 19
) -> dict[str, np.ndarray]:
    """Arrow rows of a shard -> the batch dict described in the module docstring."""
    groups = groups or dict(GROUPS)
    out: dict[str, np.ndarray] = {}
    n = table.num_rows
    for group, names in groups.items():
        first = BANDS[names[0]]
        stacked = np.empty((n, len(names), first.size, first.size), dtype=first.dtype)
        for i, name in enumerate(names):
            row0 = 0
            for chunk in table.column(name).chunks:  # copy each Arrow chunk once, straight into the batch
                stacked[row0 : row0 + len(chunk), i] = band_view(chunk, name)
                row0 += len(chunk)
        out[group] = stacked
    out["labels"] = label_matrix(table, nomenclature)
    out["patch_id"] = table.column("patch_id").to_numpy()  # object array built in C, no per-row Python
    return out


def band_view(chunk: pa.Array, name: str) -> np.ndarray:
    """`[rows, size, size]` view of one chunk of band column `name`, in the band's dtype (zero-copy)."""
    b = BANDS[name]
    raw = _chunk_bytes(chunk, name, b.nbytes)
    return raw.view(np.dtype(b.dtype).newbyteorder("<")).reshape(len(chunk), b.size, b.size)


def label_matrix(table: pa.Table, nomenclature: int = 19) -> np.ndarray:
    """Multi-hot `[rows, 19|43]` of a shard table's label column for `nomenclature` (`ShardSet.label_column`); rows
    without labels (43 classes asked of v2 rows) are the shard set's error."""
    column = label_column(nomenclature)
    label_col = table.column(column)
    if label_col.null_count:
        raise missing_labels("shard rows", nomenclature, f"{label_col.null_count} row(s) have no {column}")
    return _labels_multi_hot(label_col, nomenclature)


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
    kwargs: dict[str, Any] = {"columns": columns, "url": shards, "storage": storage}
    if decode:
        kwargs.update(decode_groups=groups, nomenclature=nomenclature)
    return ds.map_batches(read_shards, batch_size=1, batch_format="numpy", fn_kwargs=kwargs)


def to_torch(batch: dict[str, np.ndarray], device: Any = None) -> dict[str, Any]:
    """Arrays -> tensors (uint16 stays uint16: the stem casts on the device); `patch_id` stays a list of str.
    For a CUDA device the batch is copied into pinned memory and sent without blocking, so the copy overlaps the
    previous step."""
    import torch

    cuda = device is not None and torch.device(device).type == "cuda"
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key == "patch_id":
            out[key] = value.tolist() if isinstance(value, np.ndarray) else list(value)
        else:
            tensor = torch.from_numpy(np.require(value, requirements="W"))  # Ray may hand out read-only arrays
            if cuda:
                tensor = tensor.pin_memory()
            out[key] = tensor.to(device, non_blocking=True) if device is not None else tensor
    return out


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
