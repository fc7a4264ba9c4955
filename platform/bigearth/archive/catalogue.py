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
    known: pa.Table | None = None  # patch_id, s1_name of every pair the metadata describes (before subsetting)

    @property
    def excluded_counts(self) -> dict[str, int]:
        counts = {r: 0 for r in EXCLUSION_REASONS}
        for r in self.excluded.column("reason").to_pylist():
            counts[r] = counts.get(r, 0) + 1
        return counts

    @property
    def split_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.pairs.column("split").to_pylist():
            key = s if s is not None else "unassigned"
            out[key] = out.get(key, 0) + 1
        return out

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
    known = table.select(["patch_id", "s1_name"])
    if patches is not None:
        wanted = pa.array(sorted(set(patches)), pa.string())
        table = table.filter(pc.is_in(table["patch_id"], value_set=wanted))
    table = table.sort_by("patch_id")
    reason = _exclusion_reason(table, include_snow_cloud, include_no_19_labels)
    keep = pc.is_null(reason)
    excluded = pa.table({"patch_id": table["patch_id"], "reason": reason}).filter(pc.invert(keep))
    pairs = table.filter(keep)
    if limit is not None:
        pairs = pairs.slice(0, limit)
    opts: dict[str, object] = {"include_snow_cloud": include_snow_cloud, "include_no_19_labels": include_no_19_labels}
    if lay.reference_maps:
        opts["reference_maps"] = True
    return Catalogue(lay.version, lay, pairs, excluded, total, opts, known)


def _exclusion_reason(table: pa.Table, include_snow_cloud: bool, include_no_19: bool) -> pa.Array:
    reasons: list[str | None] = []
    snow = table["contains_seasonal_snow"].to_pylist()
    cloud = table["contains_cloud_or_shadow"].to_pylist()
    no19 = table["no_19_class_label"].to_pylist()
    for s, c, n in zip(snow, cloud, no19, strict=True):
        if s and not include_snow_cloud:
            reasons.append("seasonal_snow")
        elif c and not include_snow_cloud:
            reasons.append("cloud_or_shadow")
        elif n and not include_no_19:
            reasons.append("no_19_class_label")
        else:
            reasons.append(None)
    return pa.array(reasons, pa.string())
