"""Throughput of the training input pipeline (`bigearth bench input`) and its single-thread baseline."""

from __future__ import annotations

import time
from typing import Any

from bigearth.storage import StorageOptions


def bench_input(
    shards: str,
    split: str = "train",
    batch_size: int = 256,
    epochs: int = 3,
    bands: str = "all",
    storage: StorageOptions | None = None,
    stem: bool = False,
) -> dict[str, Any]:
    """Pairs per second through `open_split` -> `iter_torch` (optionally the InputStem too) over `epochs` epochs.

    `first_batch_s` is the first epoch's wait for its first batch (cold: worker processes start, files are read
    for the first time); `epoch_start_s` the slowest wait of a later epoch (what every epoch of a long run pays);
    `steady_pairs_per_s_per_cpu` the rate after each later epoch's first batch. `cpus` is what the Ray cluster
    offers."""
    import ray

    from bigearth.data import iter_torch, open_split
    from bigearth.raycluster import ensure_ray

    ensure_ray()
    ds = open_split(shards, split, bands=bands, storage=storage)
    model = None
    if stem:
        from bigearth.models.stem import InputStem

        model = InputStem("s1s2-12" if bands == "all" else bands)

    def one_epoch() -> tuple[int, int, float, float]:
        """pairs, pairs after the first batch, seconds to the first batch, seconds in all"""
        n, first_n, first_s, start = 0, 0, 0.0, time.perf_counter()
        for batch in iter_torch(ds, batch_size, bands=bands):
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
    cpus = int(ray.cluster_resources().get("CPU", 0))
    return {
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
    }


def bench_read_alone(shards: str, split: str = "train", storage: StorageOptions | None = None) -> dict[str, Any]:
    """pyarrow alone, one thread, no Ray: every row group of every shard of `split` read, decompressed and its
    page checksums verified, exactly as the pipeline's read tasks do (files read once first, so the page cache is
    as warm as in the pipeline's later epochs)."""
    from bigearth.bands import BAND_SETS
    from bigearth.shards import Manifest, open_shard, read_row_group
    from bigearth.storage import arrow_filesystem, open_fs

    fs, root = open_fs(shards, storage)
    paths = Manifest.load(fs, root).shard_paths(root, split)
    columns = ["patch_id", "labels", *BAND_SETS["s1s2-12"]]  # what `open_split(bands="all")` reads
    afs, _ = arrow_filesystem(shards, storage)

    def read_all() -> int:
        n = 0
        for path in paths:
            with afs.open_input_file(path) as f:
                pf = open_shard(f, path)
                for i in range(pf.num_row_groups):
                    n += read_row_group(pf, i, columns, path).num_rows
        return n

    read_all()
    start = time.perf_counter()
    pairs = read_all()
    seconds = time.perf_counter() - start
    return {"pairs": pairs, "seconds": round(seconds, 3), "pairs_per_s": round(pairs / seconds, 1)}
