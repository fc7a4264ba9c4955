"""The catalogue: one row per S1/S2 pair, built from the published metadata and lists, never from a crawl.

The archive's layout (bigearth.archive.layouts: extracted folders or published downloads, v1 or v2) is detected
and reads its metadata (bigearth.archive.metadata). Default policy = the official recommendation: patches with
seasonal snow, cloud or shadow, or no 19-class label are excluded. They are counted per reason and listed, never
dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from bigearth.archive.layouts import ArchiveLayout, Version, detect_layout, layout_for
from bigearth.archive.metadata import (  # noqa: F401  (the catalogue's public names)
    CATALOGUE_SCHEMA,
    EXCLUSION_REASONS,
    SPLITS,
    V1_LISTS,
    V1_LISTS_HELP,
    ArchiveError,
    read_v1_lists,
    read_v2_metadata,
)
from bigearth.core.storage import StorageOptions, open_fs


@dataclass
class Catalogue:
    """The pairs to ingest, and what the policy excluded (with the reason)."""

    version: Version
    layout: ArchiveLayout
    pairs: pa.Table  # CATALOGUE_SCHEMA
    excluded: pa.Table  # patch_id, reason
    total: int  # pairs described by the metadata before any exclusion or subsetting
    options: dict[str, object] = field(default_factory=dict)
    #: patch_id, s1_name of every pair the metadata describes (before subsetting); the published downloads only
    known: pa.Table | None = None

    @property
    def excluded_counts(self) -> dict[str, int]:
        counts = {r: 0 for r in EXCLUSION_REASONS}
        counts.update(_value_counts(self.excluded.column("reason")))
        return counts

    @property
    def split_counts(self) -> dict[str, int]:
        return _value_counts(pc.fill_null(self.pairs.column("split"), "unassigned"))

    def __len__(self) -> int:
        return self.pairs.num_rows


def build_catalogue(
    archive: str,
    *,
    version: str = "auto",
    lists: str | None = None,
    include_snow_cloud: bool = False,
    include_no_19_labels: bool = False,
    patches: Iterable[str] | None = None,
    limit: int | None = None,
    storage: StorageOptions | None = None,
) -> Catalogue:
    """Catalogue of the archive at `archive` (any fsspec URL); `patches`/`limit` restrict it to a subset."""
    fs, root = open_fs(archive, storage)
    lay = detect_layout(fs, root) if version == "auto" else layout_for(version, root)
    lay.probe(fs)
    table = lay.catalogue_table(fs, archive, lists, storage)
    total = table.num_rows
    # what staging may meet in the downloads: every pair the metadata describes (held for the downloads only)
    known = table.select(["patch_id", "s1_name"]) if lay.downloads else None
    if patches is not None:
        wanted = pa.array(sorted(set(patches)), pa.string())
        table = table.filter(pc.is_in(table["patch_id"], value_set=wanted))
    # sorted by patch id, policy applied and limit cut on row indices: the pairs kept are copied once, nothing else
    order = pc.sort_indices(table, sort_keys=[("patch_id", "ascending")])
    reason = _exclusion_reason(table, include_snow_cloud, include_no_19_labels).take(order)
    keep = pc.is_null(reason)
    kept = order.filter(keep)
    if limit is not None:
        kept = kept.slice(0, limit)
    pairs = table.take(kept)
    excluded = pa.table(
        {"patch_id": table["patch_id"].take(order.filter(pc.invert(keep))), "reason": reason.filter(pc.invert(keep))}
    )
    opts: dict[str, object] = {"include_snow_cloud": include_snow_cloud, "include_no_19_labels": include_no_19_labels}
    if lay.reference_maps:
        opts["reference_maps"] = True
    return Catalogue(lay.version, lay, pairs, excluded, total, opts, known)


def _value_counts(values: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    """How often each value occurs (Arrow's count: no Python object per pair)."""
    return {str(v["values"]): int(v["counts"]) for v in pc.value_counts(values).to_pylist()}


#: The catalogue column that flags each exclusion reason.
_FLAG_COLUMNS = {
    "seasonal_snow": "contains_seasonal_snow",
    "cloud_or_shadow": "contains_cloud_or_shadow",
    "no_19_class_label": "no_19_class_label",
}


def _exclusion_reason(table: pa.Table, include_snow_cloud: bool, include_no_19: bool) -> pa.ChunkedArray:
    """Per pair, the first reason of EXCLUSION_REASONS the policy excludes it for, else null (a null flag: not set)."""
    applies = {"seasonal_snow": not include_snow_cloud, "cloud_or_shadow": not include_snow_cloud}
    applies["no_19_class_label"] = not include_no_19
    reason = pa.chunked_array([pa.nulls(table.num_rows, pa.string())], pa.string())
    for name in reversed(EXCLUSION_REASONS):  # built from the last reason to the first: the first one set wins
        if applies[name]:
            flag = pc.fill_null(table[_FLAG_COLUMNS[name]], False)
            reason = pc.if_else(flag, pa.scalar(name, pa.string()), reason)
    return reason
