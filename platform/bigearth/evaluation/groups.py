"""Figures per group of pairs: per country and per season, for every evaluation (classification and segmentation).

    keys = group_keys(countries, acquisitions)           # {"country": ["Austria", ...], "season": ["summer", ...]}
    by_country = by_group(keys["country"], lambda idx: scores_of(idx))
    # {"Austria": {"pairs": 120, "few_pairs": False, **scores_of(indices of Austria's pairs)}, ...}

Groups of fewer than `MIN_GROUP_PAIRS` pairs still get their figures, marked `"few_pairs": true`: with a handful of
pairs, a macro figure rests on a few positives per class and moves by whole points with one pair.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from bigearth.shards.subsets import season_column

#: Groups with fewer pairs than this are marked `few_pairs` (their figures are noisy, not comparable).
MIN_GROUP_PAIRS = 100
#: The group of pairs without the metadata (no country, no acquisition date).
UNKNOWN = "unknown"


def group_keys(countries: Sequence[Any] | pa.Array, acquisitions: Sequence[Any] | pa.Array) -> dict[str, list[str]]:
    """The country and the season (of the Sentinel-2 acquisition's month) of every pair; `UNKNOWN` where missing.
    `acquisitions`: timestamps (datetime, numpy datetime64 or an Arrow timestamp array)."""
    if len(countries) != len(acquisitions):
        raise ValueError(f"{len(countries)} countries but {len(acquisitions)} acquisitions")
    if isinstance(acquisitions, pa.Array | pa.ChunkedArray):
        stamps = acquisitions if pa.types.is_timestamp(acquisitions.type) else acquisitions.cast(pa.timestamp("ms"))
    else:
        stamps = pa.array(np.asarray(list(acquisitions), dtype="datetime64[ms]"), from_pandas=True)  # NaT: null
    seasons = season_column(stamps).to_pylist()
    country_list = countries.to_pylist() if isinstance(countries, pa.Array | pa.ChunkedArray) else list(countries)
    return {
        "country": [UNKNOWN if c is None else str(c) for c in country_list],
        "season": [UNKNOWN if s is None else str(s) for s in seasons],
    }


def by_group(keys: Sequence[str], compute: Callable[[np.ndarray], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`{group: {"pairs": n, "few_pairs": n < MIN_GROUP_PAIRS, **compute(indices)}}` for every group in `keys`
    (one key per pair), sorted by name; `compute` gets the positions of the group's pairs (int64, ascending)."""
    values = np.asarray(list(keys), dtype=object)
    out: dict[str, dict[str, Any]] = {}
    for group in sorted({str(k) for k in values}):
        indices = np.flatnonzero(values == group).astype(np.int64)
        out[group] = {"pairs": len(indices), "few_pairs": bool(len(indices) < MIN_GROUP_PAIRS), **compute(indices)}
    return out
