"""Training input: a split of a shard set as a Ray Dataset of decoded batches.

    ds = open_split("s3://bucket/shards", "train")             # ray.data.Dataset, files shuffled
    for batch in iter_torch(ds, 256, local_shuffle_buffer_size=2048): ...
    # or, in a Ray Train worker: iter_torch(ray.train.get_dataset_shard("train"), 256)

A batch is `{"s1": f32[B,2,120,120], "s2_10m": u16[B,4,120,120], "s2_20m": u16[B,6,60,60],
"s2_60m": u16[B,2,20,20], "labels": f32[B,19 or 43], "patch_id": str[B]}` (groups outside the band set left out).
Decoding is zero-copy from the Parquet binary buffers: the CPU only moves bytes; normalisation and resampling
happen on the device in `bigearth.models.stem.InputStem`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from bigearth import labels as lab
from bigearth.bands import BAND_SETS, BANDS, GROUPS
from bigearth.shards import Manifest, ShardFormatError
from bigearth.storage import StorageOptions, open_fs

BandSet = Literal["all", "s1", "s2-10", "s2-12", "s1s2-10", "s1s2-12"]


def groups_for(bands: str) -> dict[str, tuple[str, ...]]:
    """The batch groups (and their bands) a band set needs; 'all' = every band."""
    if bands == "all":
        return dict(GROUPS)
    if bands not in BAND_SETS:
        raise ValueError(f"unknown band set {bands!r}; expected one of {['all', *BAND_SETS]}")
    wanted = set(BAND_SETS[bands])
    return {g: names for g, names in GROUPS.items() if wanted & set(names)}


def _column_bytes(col: pa.ChunkedArray | pa.Array, name: str, nbytes: int) -> np.ndarray:
    """`[rows, nbytes]` uint8 view of a binary column whose values all have `nbytes` bytes (zero-copy)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.null_count:
        raise ShardFormatError(f"band column {name}: {arr.null_count} null value(s)")
    n = len(arr)
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=n + 1, offset=arr.offset * 4)
    if n and not np.array_equal(np.diff(offsets), np.full(n, nbytes, dtype=np.int32)):
        bad = int(np.flatnonzero(np.diff(offsets) != nbytes)[0])
        raise ShardFormatError(f"band column {name}: row {bad} holds {int(np.diff(offsets)[bad])} bytes, "
                               f"expected {nbytes}")  # fmt: skip
    return np.frombuffer(data_buf, dtype=np.uint8, count=n * nbytes, offset=int(offsets[0])).reshape(n, nbytes)


def decode_batch(
    table: pa.Table, groups: dict[str, tuple[str, ...]] | None = None, nomenclature: int = 19
) -> dict[str, np.ndarray]:
    """Arrow rows of a shard -> the batch dict described in the module docstring."""
    groups = groups or dict(GROUPS)
    out: dict[str, np.ndarray] = {}
    n = table.num_rows
    for group, names in groups.items():
        first = BANDS[names[0]]
        dtype = np.dtype(first.dtype).newbyteorder("<")
        stacked = np.empty((n, len(names), first.size, first.size), dtype=first.dtype)
        for i, name in enumerate(names):
            raw = _column_bytes(table.column(name), name, BANDS[name].nbytes)
            stacked[:, i] = raw.view(dtype).reshape(n, first.size, first.size)
        out[group] = stacked
    column = "labels" if nomenclature == 19 else "labels43"
    label_col = table.column(column)
    if label_col.null_count:
        raise ShardFormatError(f"{label_col.null_count} row(s) have no {column}: 43-class labels exist only in "
                               "shards ingested from a v1 archive")  # fmt: skip
    out["labels"] = lab.encode_many(label_col.to_pylist(), nomenclature)  # type: ignore[arg-type]
    out["patch_id"] = np.asarray(table.column("patch_id").to_pylist(), dtype=object)
    return out


def arrow_filesystem(url: str, storage: StorageOptions | None = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem over the fsspec one (so Ray Data reads s3:// with our endpoint/credentials)."""
    fs, root = open_fs(url, storage)
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), root


def open_split(
    shards: str,
    split: str | None = "train",
    *,
    bands: str = "all",
    nomenclature: int = 19,
    shuffle_files: bool = True,
    storage: StorageOptions | None = None,
    decode: bool = False,
    batch_size: int = 256,
    **read_kwargs: Any,
) -> Any:
    """A split (None = every split) of a shard set as a Ray Dataset.

    By default the rows stay Arrow (only the columns the band set needs are read) and `iter_torch` decodes them
    in its collate step, zero-copy from the Parquet buffers, with no extra pipeline stage. `decode=True` adds a
    `map_batches` stage that yields the numpy batch dict, for consumers other than torch.
    """
    import ray

    fs, root = open_fs(shards, storage)
    manifest = Manifest.load(fs, root)
    paths = manifest.shard_paths(root, split)
    if not paths:
        known = sorted({s["split"] for s in manifest.shards})
        raise ShardFormatError(f"{shards}: no shards for split {split!r}; the shard set has {known}")
    groups = groups_for(bands)
    columns = ["patch_id", "labels" if nomenclature == 19 else "labels43", *(b for g in groups.values() for b in g)]
    pa_fs, _ = arrow_filesystem(shards, storage)
    ds = ray.data.read_parquet(paths, filesystem=pa_fs, columns=columns, shuffle="files" if shuffle_files else None,
                               **read_kwargs)  # fmt: skip
    if not decode:
        return ds
    return ds.map_batches(decode_batch, fn_kwargs={"groups": groups, "nomenclature": nomenclature},
                          batch_format="pyarrow", batch_size=batch_size, zero_copy_batch=True)  # fmt: skip


def to_torch(batch: dict[str, np.ndarray], device: Any = None) -> dict[str, Any]:
    """Arrays -> tensors (uint16 stays uint16: the stem casts on the device); `patch_id` stays a list of str."""
    import torch

    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key == "patch_id":
            out[key] = [str(v) for v in value]
        else:
            tensor = torch.from_numpy(np.require(value, requirements="W"))  # Ray may hand out read-only arrays
            out[key] = tensor.to(device, non_blocking=True) if device is not None else tensor
    return out


def _collate_class() -> type:
    from ray.data.collate_fn import ArrowBatchCollateFn

    class TorchCollate(ArrowBatchCollateFn):  # type: ignore[misc]
        """Ray collate: raw Arrow rows of a shard -> the platform's batch dict as tensors."""

        def __init__(self, groups: dict[str, tuple[str, ...]] | None, nomenclature: int | None, device: Any) -> None:
            self.groups, self.nomenclature, self.device = groups, nomenclature, device

        def __call__(self, table: pa.Table) -> dict[str, Any]:
            nomenclature = self.nomenclature or (19 if "labels" in table.column_names else 43)
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
    return dataset.iter_torch_batches(batch_size=batch_size, collate_fn=collate, drop_last=drop_last,
                                      local_shuffle_buffer_size=local_shuffle_buffer_size, **kwargs)  # fmt: skip
