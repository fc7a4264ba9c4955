"""Throughput of the training input pipeline (`bigearth bench input`)."""

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
    """Pairs per second through `open_split` -> `iter_torch` (optionally the InputStem too), after one warm-up
    epoch; `cpus` is what the Ray cluster offers."""
    import ray

    from bigearth.data import iter_torch, open_split
    from bigearth.raycluster import ensure_ray

    ensure_ray()
    ds = open_split(shards, split, bands=bands, storage=storage)
    model = None
    if stem:
        from bigearth.models.stem import InputStem

        model = InputStem("s1s2-12" if bands == "all" else bands)

    def one_epoch() -> int:
        n = 0
        for batch in iter_torch(ds, batch_size, bands=bands):
            if model is not None:
                model(batch)
            n += len(batch["patch_id"])
        return n

    one_epoch()  # warm-up: workers started, files cached by the OS like any later epoch
    start = time.perf_counter()
    pairs = sum(one_epoch() for _ in range(max(1, epochs)))
    seconds = time.perf_counter() - start
    cpus = int(ray.cluster_resources().get("CPU", 0))
    return {
        "pairs": pairs,
        "seconds": round(seconds, 3),
        "pairs_per_s": round(pairs / seconds, 1),
        "pairs_per_s_per_cpu": round(pairs / seconds / max(cpus, 1), 1),
        "cpus": cpus,
        "batch_size": batch_size,
        "split": split,
        "bands": bands,
        "stem": stem,
    }
