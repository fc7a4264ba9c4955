"""Per-band mean and standard deviation of a shard set's split (`bigearth stats`): one unit per shard file (its
per-band sums), run by an executor (default: Ray)."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from bigearth.core.bands import GROUPS
from bigearth.core.storage import StorageOptions
from bigearth.execution.executors import Executor, Resources, default_executor


def _partial_sums(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for group, names in GROUPS.items():
        x = batch[group].astype(np.float64)
        for i, name in enumerate(names):
            v = x[:, i]
            out[f"{name}.n"] = np.array([v.size], dtype=np.float64)
            out[f"{name}.sum"] = np.array([v.sum()])
            out[f"{name}.sumsq"] = np.array([np.square(v).sum()])
    return out


def file_sums(source: dict[str, Any], columns: list[str], url: str, storage: StorageOptions | None) -> dict[str, float]:
    """The unit: `{"<band>.n" | ".sum" | ".sumsq": value}` over every pixel of one shard file (`split_files`)."""
    from bigearth.input.raydata import shard_tables

    totals: dict[str, float] = {}
    for batch in shard_tables(source, columns, url, storage, decode_groups=dict(GROUPS)):
        for key, value in _partial_sums(batch).items():
            totals[key] = totals.get(key, 0.0) + float(value[0])
    return totals


def band_stats(
    shards: str, split: str = "train", storage: StorageOptions | None = None, executor: Executor | None = None
) -> dict[str, Any]:
    """`{band: {"mean", "std", "count"}}` over every pixel of the split, at native resolution. `executor`: where
    the sums run (default: Ray; `LocalExecutor`: in this process, no Ray)."""
    from bigearth.input.raydata import split_files

    files, columns = split_files(shards, split, storage=storage)
    unit = partial(file_sums, columns=columns, url=shards, storage=storage)
    totals: dict[str, float] = {}
    for sums in default_executor(executor).map(unit, files, desc=f"stats {split}", resources=Resources(cpus=1)):
        for key, value in sums.items():
            totals[key] = totals.get(key, 0.0) + value
    out: dict[str, Any] = {}
    for names in GROUPS.values():
        for name in names:
            n = totals[f"{name}.n"]
            mean = totals[f"{name}.sum"] / n
            var = max(totals[f"{name}.sumsq"] / n - mean * mean, 0.0)
            out[name] = {"mean": mean, "std": var**0.5, "count": int(n)}
    return out
