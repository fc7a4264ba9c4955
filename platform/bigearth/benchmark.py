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

    one_epoch()  # warm-up: workers started, files cached by the OS like any later epoch
    runs = [one_epoch() for _ in range(max(1, epochs))]
    pairs, seconds = sum(r[0] for r in runs), sum(r[3] for r in runs)
    steady_pairs, steady_s = sum(r[1] for r in runs), sum(r[3] - r[2] for r in runs)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    return {
        "pairs": pairs,
        "seconds": round(seconds, 3),
        "pairs_per_s": round(pairs / seconds, 1),
        "pairs_per_s_per_cpu": round(pairs / seconds / max(cpus, 1), 1),
        # after the first batch of each epoch: Ray Data's per-epoch start-up (planning, task launch) left out
        "steady_pairs_per_s_per_cpu": round(steady_pairs / max(steady_s, 1e-9) / max(cpus, 1), 1),
        "first_batch_s": round(sum(r[2] for r in runs) / len(runs), 2),
        "cpus": cpus,
        "batch_size": batch_size,
        "split": split,
        "bands": bands,
        "stem": stem,
    }
