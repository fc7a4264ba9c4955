"""The ingest driver's accounting (bigearth.ingest.job): the shard reports, summed as they arrive, into the
manifest (rows per split, exclusions, shard entries), the quarantine (the pairs found absent merged with those the
reads quarantined, by patch id, with their kinds) and the pairs written without a reference map. Kept as counts and
Arrow rows: no dict per pair stays in the driver.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bigearth.archive.catalogue import Catalogue
from bigearth.archive.presence import Presence
from bigearth.shards.format import QUARANTINE_SCHEMA, Manifest, ShardEntry


class Tally:
    """What the shard reports say, summed as they arrive: rows per split, exclusions, shard entries; their
    quarantined pairs and pairs without a reference map as Arrow rows (a few bytes each, no dict per pair)."""

    def __init__(self, cat: Catalogue) -> None:
        self.cat = cat
        self.splits: dict[str, int] = {}
        self.excluded = dict(cat.excluded_counts)
        self.entries: list[ShardEntry] = []
        self.pairs = 0
        self._quarantined: list[pa.Table] = []
        self._no_map: list[pa.Array] = []

    def add(self, report: dict[str, Any]) -> None:
        self.pairs += report["rows"]
        self.splits[report["split"]] = self.splits.get(report["split"], 0) + report["rows"]
        for reason, n in report["excluded"].items():
            self.excluded[reason] = self.excluded.get(reason, 0) + n
        if report["rows"]:
            self.entries.append(ShardEntry(report["path"], report["split"], report["rows"]))
        if report["quarantined"]:
            self._quarantined.append(pa.Table.from_pylist(report["quarantined"], schema=QUARANTINE_SCHEMA))
        if report.get("reference_map_missing"):
            self._no_map.append(pa.array(report["reference_map_missing"], pa.string()))

    def manifest(self, archive: str) -> Manifest:
        cat = self.cat
        return Manifest(
            pairs=self.pairs,
            splits=self.splits,
            shards=sorted(self.entries, key=lambda e: e.path),
            excluded=self.excluded,
            source={"archive": archive, "layout": cat.version, "catalogue_pairs": cat.total, **cat.options},
        )

    def reference_map_missing(self) -> pa.Array:
        """Patch ids written without a reference map, sorted."""
        ids = pa.chunked_array(self._no_map, pa.string()).combine_chunks()
        return ids.take(pc.sort_indices(ids))

    def quarantine(self, absent: Iterator[pa.Table]) -> Iterator[pa.Table]:
        """Every quarantined pair by patch id: those found absent (`absent`: in patch-id order, a chunk at a time)
        merged with those the reads quarantined."""
        yield from _merged(absent, self._read_quarantine().sort_by("patch_id"))

    def quarantine_kinds(self, presence: Presence | None) -> dict[str, int]:
        """Quarantined pairs per kind: those found absent (`presence`) and those the reads quarantined."""
        kinds: dict[str, int] = {}
        if presence is not None:
            kinds = {"missing_file": _count(presence.no_s2), "missing_s1": _count(presence.no_s1)}
        for v in pc.value_counts(self._read_quarantine()["kind"]).to_pylist():
            kinds[v["values"]] = kinds.get(v["values"], 0) + int(v["counts"])
        return {k: n for k, n in sorted(kinds.items()) if n}

    def _read_quarantine(self) -> pa.Table:
        return pa.concat_tables(self._quarantined) if self._quarantined else QUARANTINE_SCHEMA.empty_table()


def _count(flags: pa.ChunkedArray) -> int:
    return int(pc.sum(flags).as_py() or 0)


def _merged(absent: Iterator[pa.Table], read: pa.Table) -> Iterator[pa.Table]:
    """Two quarantines sorted by patch id, as one (a chunk of `absent` at a time)."""
    at = 0
    for chunk in absent:
        chunk = chunk.cast(QUARANTINE_SCHEMA)
        upto = int(pc.sum(pc.less_equal(read["patch_id"], chunk["patch_id"][-1])).as_py() or 0)
        yield pa.concat_tables([chunk, read.slice(at, upto - at)]).sort_by("patch_id")
        at = upto
    yield read.slice(at)
