"""Throughput of the training input pipeline (`bigearth bench input`) and its single-thread baseline."""

from __future__ import annotations

import time
from typing import Any

from bigearth.core.storage import StorageOptions


def bench_input(
    shards: str,
    split: str = "train",
    batch_size: int = 256,
    epochs: int = 3,
    bands: str = "all",
    storage: StorageOptions | None = None,
    stem: bool = False,
    path: str = "rowgroups",
    shuffle_buffer: int = 2048,
    threads: int | None = None,
) -> dict[str, Any]:
    """Pairs per second of the training input (optionally the InputStem too) over `epochs` epochs.

    `path="rowgroups"`: what training uses (the plan as a Ray Dataset -> `bigearth.input.loader.RowGroupLoader`, one
    worker's view, `threads` readers, default one per CPU); `path="rows"`: Ray Data's row path (`open_split` ->
    `iter_torch`: read tasks -> object store -> collate), for comparison. Both shuffle with a buffer of
    `shuffle_buffer` rows. `first_batch_s` is the first epoch's wait for its first batch (cold: processes and
    threads start, files are read for the first time); `epoch_start_s` the slowest wait of a later epoch (what
    every epoch of a long run pays); `steady_pairs_per_s_per_cpu` the rate after each later epoch's first batch.
    `cpus` is what the Ray cluster offers: the caller attaches to one first (`bigearth bench` does)."""
    import ray

    from bigearth.input.buffers import BatchBuffers
    from bigearth.input.loader import RowGroupLoader, epoch_share, open_row_groups, plan_of
    from bigearth.input.raydata import iter_torch, open_split

    if path not in ("rowgroups", "rows"):
        raise ValueError(f"path {path!r}: expected 'rowgroups' or 'rows'")
    if not ray.is_initialized():
        raise RuntimeError("bench_input measures on a Ray cluster: attach first (bigearth.execution.raycluster)")
    cpus = int(ray.cluster_resources().get("CPU", 0))
    epoch_no = 0
    if path == "rows":
        ds = open_split(shards, split, bands=bands, storage=storage)

        def batches() -> Any:
            return iter_torch(ds, batch_size, bands=bands, local_shuffle_buffer_size=shuffle_buffer or None)

    else:
        plan = plan_of(open_row_groups(shards, split, storage))
        buffers = BatchBuffers()  # one for every epoch's loader, as training does

        def batches() -> Any:
            share, limit = epoch_share(plan, epoch_no, shuffle=True, equal=False)
            return RowGroupLoader(
                share,
                batch_size,
                bands=bands,
                storage=storage,
                shuffle_buffer=shuffle_buffer,
                seed=epoch_no,
                limit=limit,
                threads=threads or max(1, cpus),
                buffers=buffers,
            )

    model = None
    if stem:
        from bigearth.models.stem import InputStem

        model = InputStem("s1s2-12" if bands == "all" else bands)

    def one_epoch() -> tuple[int, int, float, float]:
        """pairs, pairs after the first batch, seconds to the first batch, seconds in all"""
        nonlocal epoch_no
        n, first_n, first_s, start = 0, 0, 0.0, time.perf_counter()
        epoch_no += 1
        for batch in batches():
            if model is not None:
                model(batch)
            n += len(batch["patch_id"])
            if not first_n:
                first_n, first_s = n, time.perf_counter() - start
        return n, n - first_n, first_s, time.perf_counter() - start

    first = one_epoch()  # cold: worker processes start, files are read for the first time
    runs = [one_epoch() for _ in range(max(1, epochs - 1))]
    pairs, seconds = sum(r[0] for r in runs), sum(r[3] for r in runs)
    steady_pairs, steady_s = sum(r[1] for r in runs), sum(r[3] - r[2] for r in runs)
    return {
        "path": path,
        "pairs": pairs,
        "seconds": round(seconds, 3),
        "pairs_per_s": round(pairs / seconds, 1),
        "pairs_per_s_per_cpu": round(pairs / seconds / max(cpus, 1), 1),
        "steady_pairs_per_s_per_cpu": round(steady_pairs / max(steady_s, 1e-9) / max(cpus, 1), 1),
        "first_batch_s": round(first[2], 3),
        "epoch_start_s": round(max(r[2] for r in runs), 3),
        "epochs": 1 + len(runs),
        "cpus": cpus,
        "batch_size": batch_size,
        "split": split,
        "bands": bands,
        "stem": stem,
        "shuffle_buffer": shuffle_buffer,
    }


def bench_read_alone(
    shards: str,
    split: str = "train",
    storage: StorageOptions | None = None,
    verify: bool = True,
    threads: int = 1,
    repeat: int = 1,
) -> dict[str, Any]:
    """pyarrow alone, no Ray: every row group of every shard of `split` read, decompressed and its page checksums
    verified (`verify`), exactly as the training input reads them, by `threads` threads at once (one row group
    each at a time: the same cores as the input pipeline, with nothing else to do). The files are read once first,
    so the page cache is as warm as in the pipeline's later epochs; `repeat` passes, the median reported."""
    import statistics
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq

    from bigearth.core.bands import BAND_SETS
    from bigearth.core.storage import arrow_filesystem
    from bigearth.input.loader import row_groups
    from bigearth.shards.format import open_for_reading, open_shard, read_row_group
    from bigearth.shards.shardset import ShardSet

    shard_set = ShardSet.open(shards, storage)
    plan = row_groups(shards, split, storage)
    columns = ["patch_id", shard_set.label_column(19), *BAND_SETS["s1s2-12"]]  # what `open_split(bands="all")` reads
    afs, _ = arrow_filesystem(shards, storage)

    def one(group: Any) -> int:
        with open_for_reading(afs, group.path) as f:
            pf = open_shard(f, group.path) if verify else pq.ParquetFile(f)
            return read_row_group(pf, group.index, columns, group.path).num_rows

    with ThreadPoolExecutor(max(1, threads)) as pool:
        sum(pool.map(one, plan))
        rates, pairs, seconds = [], 0, 0.0
        for _ in range(max(1, repeat)):
            start = time.perf_counter()
            pairs = sum(pool.map(one, plan))
            seconds = time.perf_counter() - start
            rates.append(pairs / seconds)
    return {
        "pairs": pairs,
        "threads": threads,
        "seconds": round(seconds, 3),
        "pairs_per_s": round(statistics.median(rates), 1),
        "runs": [round(r, 1) for r in rates],
    }


def bench_copy_alone(pairs: int = 2000) -> dict[str, Any]:
    """The floor of any pipeline that hands out batch arrays: one thread copying a pair's 275 KB of bands from one
    buffer into another (numpy), as the loader's gather does once per pair."""
    import numpy as np

    from bigearth.core.bands import ALL_BANDS

    nbytes = sum(b.nbytes for b in ALL_BANDS)
    src = np.random.default_rng(0).integers(0, 255, (64, nbytes), dtype=np.uint8)
    dst = np.empty_like(src)
    start, n = time.perf_counter(), 0
    while n < pairs:
        np.copyto(dst, src)
        n += len(src)
    return {"pairs_per_s": round(n / (time.perf_counter() - start), 1), "bytes_per_pair": nbytes}
