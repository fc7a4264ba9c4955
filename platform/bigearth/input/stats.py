"""Per-band mean and standard deviation of a shard set's split, computed with Ray Data (`bigearth stats`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bigearth.core.bands import GROUPS
from bigearth.core.storage import StorageOptions


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


def band_stats(shards: str, split: str = "train", storage: StorageOptions | None = None) -> dict[str, Any]:
    """`{band: {"mean", "std", "count"}}` over every pixel of the split, at native resolution."""
    from bigearth.execution.raycluster import ensure_ray
    from bigearth.input.raydata import open_split

    ensure_ray()
    ds = open_split(shards, split, storage=storage, shuffle_files=False, decode=True)
    totals: dict[str, float] = {}
    for row in ds.map_batches(_partial_sums, batch_format="numpy").iter_rows():
        for key, value in row.items():
            totals[key] = totals.get(key, 0.0) + float(value)
    out: dict[str, Any] = {}
    for names in GROUPS.values():
        for name in names:
            n = totals[f"{name}.n"]
            mean = totals[f"{name}.sum"] / n
            var = max(totals[f"{name}.sumsq"] / n - mean * mean, 0.0)
            out[name] = {"mean": mean, "std": var**0.5, "count": int(n)}
    return out
