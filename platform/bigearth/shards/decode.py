"""The shard format's decode step, with no Ray and no pipeline: Arrow rows of a shard -> the platform's batch.

A batch is `{"s1": f32[B,2,120,120], "s2_10m": u16[B,4,120,120], "s2_20m": u16[B,6,60,60],
"s2_60m": u16[B,2,20,20], "labels": f32[B,19 or 43], "patch_id": str[B]}` (groups outside the band set left out),
and with `maps=True` `"mask": u8[B,120,120]`: the reference map's 19-class target per pixel (`IGNORE_INDEX` where
its code has no class, and everywhere for a pair ingested without a map).
Decoding views the Parquet binary buffers without copying and copies each band once into the batch: the CPU only
moves bytes; normalisation and resampling happen on the device in `bigearth.models.stem.InputStem`. Every reader
(Ray Data's rows, the training loader, the PyTorch dataset, the service's patch store, the model runner) decodes here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bigearth.core import labels as lab
from bigearth.core.bands import BAND_SETS, BANDS, GROUPS
from bigearth.shards.format import REFERENCE_MAP, ShardFormatError
from bigearth.shards.shardset import label_column, missing_labels

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
    table: pa.Table,
    groups: dict[str, tuple[str, ...]] | None = None,
    nomenclature: int = 19,
    maps: bool = False,
    where: str = "shard rows",
) -> dict[str, np.ndarray]:
    """Arrow rows of a shard -> the batch dict described in the module docstring (`maps`: with `mask`; `where`
    names the rows' shard set in errors)."""
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
    if maps:
        out["mask"] = map_targets(table, where)
    return out


class NoReferenceMaps(ShardFormatError):
    """Shards without the `reference_map` column, asked for the per-pixel targets of a segmentation model."""


def require_maps(names: Sequence[str], where: str) -> None:
    """Raise `NoReferenceMaps` naming `where` (the shard set) unless `names` (its columns) hold `reference_map`."""
    if REFERENCE_MAP.name not in names:
        raise NoReferenceMaps(
            f"{where}: the shards have no {REFERENCE_MAP.name} column, which a segmentation model needs: ingest a "
            "v2 archive with its reference maps (Reference_Maps/ or Reference_Maps.tar.zst beside S1 and S2; "
            "`bigearth synth --reference-maps` makes a synthetic one) into a new shard set"
        )


def map_targets(table: pa.Table, where: str = "shard rows") -> np.ndarray:
    """`uint8 [rows, 120, 120]` per-pixel 19-class targets of a shard table's `reference_map` column (CLC codes
    through `CLC_LUT_U16`, whole arrays at once): `IGNORE_INDEX` where a code has no class and for every pixel of a
    null map; an unknown code is an `UnknownLabelError` naming the patch."""
    require_maps(table.column_names, where)
    n, side = table.num_rows, 120
    out = np.full((n, side, side), lab.IGNORE_INDEX, dtype=np.uint8)
    row0 = 0
    for chunk in table.column(REFERENCE_MAP.name).chunks:
        rows = len(chunk)
        valid = np.ones(rows, bool) if not chunk.null_count else chunk.is_valid().to_numpy(zero_copy_only=False)
        if valid.any():
            filled = chunk.fill_null(b"\0" * (side * side * 2)) if chunk.null_count else chunk
            codes = _chunk_bytes(filled, REFERENCE_MAP.name, side * side * 2).view("<u2").reshape(rows, side, side)
            try:
                if valid.all():  # no boolean-index copy of the codes
                    out[row0 : row0 + rows] = lab.reference_targets(codes, where)
                else:
                    out[row0 : row0 + rows][valid] = lab.reference_targets(codes[valid], where)
            except lab.UnknownLabelError:
                ids = table.column("patch_id").slice(row0, rows).to_pylist()
                for i in np.flatnonzero(valid):  # only to name the patch: the error path
                    lab.reference_targets(codes[i], f"{where}: reference map of {ids[i]}")
                raise
        row0 += rows
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


def to_torch(batch: dict[str, np.ndarray], device: Any = None) -> dict[str, Any]:
    """Arrays (or tensors already, e.g. the loader's pinned ones) -> tensors (uint16 stays uint16: the stem casts
    on the device); `patch_id` stays a list of str. For a CUDA device the batch is sent from pinned memory (copied
    there first unless it is already) without blocking, so the copy overlaps the previous step."""
    import torch

    cuda = device is not None and torch.device(device).type == "cuda"
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if key == "patch_id":
            out[key] = value.tolist() if isinstance(value, np.ndarray) else list(value)
        else:
            if isinstance(value, torch.Tensor):
                tensor = value
            elif cuda:  # one copy into pinned memory, writable or not (Ray hands out read-only arrays)
                tensor = _pinned_like(value)
                np.copyto(tensor.numpy(), value)
            else:
                tensor = torch.from_numpy(np.require(value, requirements="W"))  # a read-only array is copied
            if cuda and tensor.device.type == "cpu" and not tensor.is_pinned():
                tensor = tensor.pin_memory()
            out[key] = tensor.to(device, non_blocking=True) if device is not None else tensor
    return out


def _pinned_like(value: np.ndarray) -> Any:
    """An empty pinned tensor of `value`'s shape, dtype and memory order (a band-major `[C, B, H, W]` array seen as
    `[B, C, H, W]` stays band-major, as the loader's own pinned batches are)."""
    import torch

    dtype = torch.from_numpy(np.empty(0, dtype=value.dtype)).dtype
    order = sorted(range(value.ndim), key=lambda d: -value.strides[d])  # outermost dimension first
    tensor = torch.empty([value.shape[d] for d in order], dtype=dtype, pin_memory=True)
    return tensor.permute(*sorted(range(value.ndim), key=lambda d: order[d]))
