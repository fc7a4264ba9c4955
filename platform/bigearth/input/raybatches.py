"""Training input, Ray Data side (`data.pipeline: ray_data`): row groups read and collated into the platform's
batches in Ray Data tasks, on any node with a CPU, and handed to each Ray Train worker through its dataset shard.

    ds = open_batches("s3://bucket/shards", "train", batch_size=256, shuffle_buffer=2048, seed=0)
    # TorchTrainer(datasets={"train_batches": ds}, dataset_config=DataConfig(datasets_to_split=["train_batches"]))
    for batch in shard_batches(ray.train.get_dataset_shard("train_batches"), device): ...   # once per epoch

The plan (one item per Parquet row group, `bigearth.input.loader.row_groups`) is a Dataset of one block per row
group; `randomize_block_order` permutes it on every execution, seeded (`RandomSeedConfig(seed,
reseed_after_execution=True)`: Ray Data combines the seed with its execution index, so each epoch, which is one
execution of the split, has another order, the same in every run). `map_batches` then hands every task
`groups_per_task` consecutive row groups of that order (CPU only: the tasks go wherever Ray has a free CPU, CPU-only
nodes included) and `collate` reads them with `RowGroupLoader` and a shuffle buffer of all of them, so every batch
takes equal shares of rows from each of them (no per-row Python).

A row of the Dataset is one whole batch (`pack`): each band group's band-major `[C, B, H, W]` array (as the loader
allocates it; no re-layout) and the labels `[B, classes]` as one Arrow binary value each (wrapping the loader's
memory; Ray's tensor columns cost the consumer ~100 us a pair to turn back into numpy, measured), the ids. Ray
Train's `DataConfig` splits the Dataset with `streaming_split(world, equal=True, locality_hints=...)`, so every
worker receives the same number of rows, i.e. of batches, in every epoch (at most `world - 1` batches of the epoch
are dropped to equalise, none read twice), and `shard_batches` turns each row back into the batch of
`bigearth.shards.decode` (`[B, C, H, W]` views) as tensors. Batches are those of `RowGroupLoader` (keys, dtypes,
shapes, band-major memory), all of them whole: a task drops what is left of its rows after its last whole batch
(`groups_per_task` makes a task of full row groups hold whole batches where it can, so only tasks holding a shard's
last, shorter row group drop rows, fewer than a batch each, other rows every epoch). An epoch therefore has at
most the steps the learning-rate schedule counts (train pairs / global batch), never more.

Validation does not come this way: it keeps the worker path's `row_share` (every row exactly once, which an
equalising split cannot promise). Why a Ray Dataset per worker group and not per epoch: DataConfig splits the
Datasets it is given once per worker group, and Ray Data re-executes the split every epoch, reseeding the shuffle;
the trainer hands Ray Train a function that makes the Dataset, called at every worker group's start, so a group
restarted after a failure gets the seed of the epoch it resumes at (`resume_seed`) instead of replaying epoch 0's.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from bigearth.core.bands import BANDS, GROUPS
from bigearth.core.storage import StorageOptions
from bigearth.shards.decode import groups_for, to_torch
from bigearth.shards.format import ROW_GROUP_PAIRS
from bigearth.shards.subsets import MetadataSubset

from .loader import RowGroup, RowGroupLoader, row_groups

#: Ray Data's target block size for the collated batches: below one batch, so each batch is a block of its own.
BLOCK_BYTES = 1 << 20


def groups_per_task(plan: Sequence[RowGroup], batch_size: int, shuffle_buffer: int) -> int:
    """Row groups one collating task reads: enough for a shuffle buffer of `shuffle_buffer` rows and for one
    batch, and at least two (so batches mix row groups) when the plan has two; rounded up so that full row groups
    make whole batches (a task drops its short rest: `collate`) where that takes at most 8 times as many."""
    group_rows = max((g.rows for g in plan), default=ROW_GROUP_PAIRS)
    want = max(-(-shuffle_buffer // group_rows), -(-batch_size // group_rows), 2 if shuffle_buffer else 1)
    whole = batch_size // math.gcd(batch_size, group_rows)  # row groups whose rows are a multiple of the batch
    if whole <= 8:
        want = -(-want // whole) * whole
    return max(1, min(want, len(plan)))


def task_seed(seed: int, groups: Sequence[RowGroup]) -> list[int]:
    """The seed of a task's shuffle: the run's seed and the row groups it was dealt (which differ every epoch)."""
    key = "\n".join(f"{g.path}#{g.index}" for g in groups).encode()
    return [seed, zlib.crc32(key)]


def resume_seed(seed: int, start_epoch: int) -> int:
    """The base seed of a Dataset whose executions begin at epoch `start_epoch` (a resumed run): `seed` itself
    from epoch 0, else another seed per starting epoch, so a resumed run does not replay epoch 0's order."""
    if start_epoch == 0:
        return seed
    return int(np.random.SeedSequence([seed, start_epoch]).generate_state(1)[0])


def plan_items(plan: Sequence[RowGroup]) -> list[dict[str, Any]]:
    """The plan as Dataset items (one per row group, a metadata subset's selection included: `RowGroup.item`)."""
    return [g.item() for g in plan]


def groups_of(items: dict[str, Any]) -> list[RowGroup]:
    """The row groups of a batch of plan items (as `map_batches` hands them: a column per field)."""
    fields = ("url", "path", "index", "rows", "selected", "total")
    return [RowGroup.of_item(*values) for values in zip(*(items[f] for f in fields), strict=True)]


def pack(batch: dict[str, Any]) -> pa.Table:
    """A batch of `RowGroupLoader` (tensors on the CPU) as one Dataset row, Arrow values wrapping the loader's own
    memory (no copy): each band group's band-major `[C, B, H, W]` array and the labels `[B, classes]` as one binary
    value each, the ids as a list, `rows` = B."""
    columns: dict[str, pa.Array] = {}
    n = len(batch["patch_id"])
    for key, value in batch.items():
        if key == "patch_id":
            columns[key] = pa.array([list(value)], type=pa.list_(pa.string()))
            continue
        array = np.asarray(value)
        if key != "labels":
            array = array.transpose(1, 0, 2, 3)  # the band-major memory the loader filled
        if not array.flags.c_contiguous:
            raise ValueError(f"{key}: expected the loader's contiguous arrays")
        data = pa.py_buffer(array)
        offsets = pa.py_buffer(np.array([0, data.size], dtype=np.int64))
        columns[key] = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, data])
    columns["rows"] = pa.array([n], type=pa.int64())
    return pa.table(columns)


def unpack(table: pa.Table, i: int = 0) -> dict[str, np.ndarray]:
    """Row `i` of a block of packed batches as the platform's batch: `[B, C, H, W]` views of the band-major arrays
    (read-only, over the block's memory: no copy), labels, ids."""
    n = int(table.column("rows")[i].as_py())
    out: dict[str, np.ndarray] = {}
    for key in table.column_names:
        if key == "rows":
            continue
        value = table.column(key)[i]
        if key == "patch_id":
            out[key] = np.array(value.as_py(), dtype=object)
            continue
        buffer = value.as_buffer()  # a slice of the block's buffer
        if key == "labels":
            out[key] = np.frombuffer(buffer, dtype=np.float32).reshape(n, -1)
            continue
        names = GROUPS[key]
        b = BANDS[names[0]]
        band_major = np.frombuffer(buffer, dtype=np.dtype(b.dtype)).reshape(len(names), n, b.size, b.size)
        out[key] = band_major.transpose(1, 0, 2, 3)
    return out


def collate(
    items: dict[str, Any],
    *,
    batch_size: int,
    shuffle_buffer: int,
    bands: str | Sequence[str] = "all",
    nomenclature: int = 19,
    storage: StorageOptions | None = None,
    seed: int = 0,
    threads: int = 1,
) -> Iterator[pa.Table]:
    """Ray Data UDF: the row groups of a batch of plan items in, packed batches out (`pack`), every batch mixing
    rows of all of them (`RowGroupLoader`'s shuffle buffer over the task's rows)."""
    groups = groups_of(items)
    buffer = sum(g.rows for g in groups) if shuffle_buffer else 0
    loader = RowGroupLoader(
        groups,
        batch_size,
        bands=bands,
        nomenclature=nomenclature,
        storage=storage,
        shuffle_buffer=buffer,
        seed=task_seed(seed, groups),
        threads=threads,
        prefetch=1,
        drop_last=True,  # whole batches only: the steps of an epoch never exceed the schedule's count
    )
    for batch in loader:
        yield pack(batch)


def shuffled_plan(plan: Sequence[RowGroup], seed: int) -> Any:
    """The plan as a Dataset of one block per row group whose order every execution permutes anew: seeded, the
    `n`-th execution of any such Dataset of the same plan and seed in the same order."""
    import ray

    ds: Any = ray.data.from_items(plan_items(plan), override_num_blocks=len(plan))
    return ds.randomize_block_order(seed=ray.data.RandomSeedConfig(seed=seed, reseed_after_execution=True))


def open_batches(
    shards: str,
    split: str | Sequence[str],
    *,
    batch_size: int,
    shuffle_buffer: int,
    bands: str | Sequence[str] = "all",
    nomenclature: int = 19,
    storage: StorageOptions | None = None,
    seed: int = 0,
    threads: int = 1,
    plan: Sequence[RowGroup] | None = None,
    subset: MetadataSubset | None = None,
) -> Any:
    """The training batches of a split as a streaming Ray Dataset (see the module docstring): every execution
    (epoch) another seeded order of the row groups, collated in CPU-only tasks of `groups_per_task` row groups.
    `plan` (else the split's, of the metadata `subset` when given) may select rows of its groups."""
    plan = list(plan) if plan is not None else row_groups(shards, split, storage, subset)
    if not plan:
        raise ValueError(f"{shards}: split {split!r} has no row groups")
    band_set = tuple(bands) if not isinstance(bands, str) else bands
    groups_for(band_set)  # an unknown band set fails here, not in the tasks
    kwargs: dict[str, Any] = {
        "batch_size": batch_size,
        "shuffle_buffer": shuffle_buffer,
        "bands": band_set,
        "nomenclature": nomenclature,
        "storage": storage,
        "seed": seed,
        "threads": threads,
    }
    ds = shuffled_plan(plan, seed).map_batches(
        collate,
        batch_size=groups_per_task(plan, batch_size, shuffle_buffer),
        batch_format="numpy",
        num_cpus=1,
        fn_kwargs=kwargs,
    )
    # every batch its own block, handed on as soon as it is collated: under Ray's default target (128 MiB) a task
    # holds back ~4 batches of 128 pairs before the first leaves (measured: 1.2-2.5 s to an epoch's first batch,
    # 0.2-0.3 s with this)
    ds.context.target_max_block_size = BLOCK_BYTES
    return ds


def shard_batches(shard: Any, device: Any = None, prefetch: int = 2) -> Iterator[dict[str, Any]]:
    """One epoch of a worker's batches from its dataset shard (a `DataIterator` of `open_batches`' Dataset, or the
    Dataset itself), as tensors on `device`."""
    # whole Arrow blocks (batch_size=None: no re-batching, no conversion by Ray), each row of a block one batch;
    # to_torch copies the read-only block memory once (into pinned memory on CUDA: a copy the worker path, which
    # fills pinned batches itself, does not make)
    for block in shard.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=prefetch):
        for i in range(block.num_rows):
            yield to_torch(unpack(block, i), device)
