"""The download side of the ingest job (bigearth.ingest.job): stage every published download file as one unit of an
executor (a Ray task by default),
summarise and report what the downloads held, and remove the staged members at the end. A download whose md5
differs from the expected one (bigearth.archive.checksums) stops the ingest here, before any shard task, unless
the user accepts it. The staging itself (one pass over one download, the spills, a shard's view of them) is
bigearth.archive.staging."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bigearth.archive.catalogue import Catalogue
from bigearth.archive.checksums import ChecksumMismatch, check_md5, check_md5sums, read_md5sums
from bigearth.archive.staging import missing_record, record_path, stage_download, staged_download_summary
from bigearth.core.storage import StorageOptions, join, open_fs
from bigearth.execution.executors import Executor, Resources, default_executor
from bigearth.shards.format import Manifest


def stage_downloads(
    cat: Catalogue,
    todo: dict[int, pa.Table],
    archive: str,
    staging: str,
    storage: StorageOptions,
    progress: bool,
    accept_checksum_mismatch: bool = False,
    trust_md5sums: bool = False,
    executor: Executor | None = None,
) -> list[dict[str, Any]]:
    """Stage every download the unfinished shards need (one unit per file, through `executor`, default Ray: in
    parallel); return their records.

    `todo`: planned shard index -> its catalogue rows (a table), for the shards not yet written. Raises ChecksumMismatch
    when a staged download's md5 is not the expected one, unless `accept_checksum_mismatch`; its staged members
    are removed then, so that a re-run reads the file again (fetched anew, or accepted). An `MD5SUMS` entry that
    disagrees with a published md5 raises ChecksumMismatch before anything is staged, unless `trust_md5sums`
    (then its digests replace the published ones: a re-packed or synthetic archive).
    """
    fs, root = open_fs(archive, storage)
    sfs, sroot = open_fs(staging, storage)
    md5sums, problems = read_md5sums(fs, root)
    for problem in problems:
        print(f"ingest: WARNING {problem}")
    check_md5sums(cat.layout.downloads, md5sums, archive, trust_md5sums)
    key_column = {"s2": "patch_id", "reference_maps": "patch_id", "s1": "s1_name"}
    units: list[tuple[dict[str, Any], pa.Table, pa.Array]] = []
    records: list[dict[str, Any]] = []
    for d in cat.layout.downloads:
        present = fs.exists(join(root, d.name))
        if not present:
            if d.required:
                records.append(missing_record(d))
            continue
        if not todo and not sfs.exists(record_path(sroot, d.name)):
            continue  # every shard is written: nothing to stage
        col = key_column[d.kind]
        route = _route(todo, col)
        known = cat.known.column(col).combine_chunks() if cat.known is not None else pa.array([], pa.string())
        units.append((dataclasses.asdict(d), route, known))
    unit = partial(_stage_one, archive=archive, staging=staging, storage=storage, progress=progress)
    records.extend(default_executor(executor).map(unit, units, desc="stage downloads", resources=Resources(cpus=1)))
    try:
        check_md5(records, cat.layout.downloads, md5sums, archive, accept_checksum_mismatch, trust_md5sums)
    except ChecksumMismatch:
        for r in records:
            if r.get("md5_matches") is False:
                sfs.rm(record_path(sroot, r["download"]))
                if sfs.exists(join(sroot, r["download"])):
                    sfs.rm(join(sroot, r["download"]), recursive=True)
        raise
    return records


def pack_buckets(splits: Sequence[str], records: Sequence[dict[str, Any]], shard_size: int) -> list[list[int]]:
    """The planned shards (`splits`: the split of each, in plan order; the staging buckets) grouped into the shards
    to write, from what the downloads held: consecutive buckets of one split join while the patches staged for them
    fit in `shard_size` (per bucket, the more of its S2 patches and S1 folders staged: what its task loads). A
    complete archive keeps one shard per bucket; the full metadata beside a part of the images no longer writes a
    file per few pairs, and a task never loads more than `shard_size` patches of a download. Staging records made
    before buckets were counted leave every bucket its own shard."""
    pairs = [r for r in records if r.get("kind") != "reference_maps"]  # an older record has no kind: it counts
    if not pairs or any("buckets" not in r for r in pairs):
        return [[i] for i in range(len(splits))]
    load = [max(int(r["buckets"].get(str(i), 0)) for r in pairs) for i in range(len(splits))]
    groups: list[list[int]] = []
    filled = 0
    for i, split in enumerate(splits):
        if groups and splits[groups[-1][0]] == split and filled + load[i] <= shard_size:
            groups[-1].append(i)
            filled += load[i]
        else:
            groups.append([i])
            filled = load[i]
    return groups


def _route(todo: dict[int, pa.Table], col: str) -> pa.Table:
    """Member name (the pair's `col`: S2 patch id or S1 name) -> its shard, for every pair of `todo` naming one."""
    parts = []
    for i, rows in todo.items():
        names = rows[col]
        names = names.filter(pc.and_(pc.is_valid(names), pc.not_equal(names, "")))
        parts.append(
            pa.table({"name": names.cast(pa.string()), "shard": pa.nulls(len(names), pa.int32()).fill_null(i)})
        )
    schema = pa.schema([("name", pa.string()), ("shard", pa.int32())])
    return pa.concat_tables(parts).cast(schema) if parts else schema.empty_table()


def _stage_one(
    item: tuple[dict[str, Any], pa.Table, pa.Array], archive: str, staging: str, storage: StorageOptions, progress: bool
) -> dict[str, Any]:
    """The unit of staging: one download (its description, the route of its members, the names it may hold)."""
    download, route, known = item
    return stage_download(download, archive, staging, storage, route, known, progress)


def downloads_summary(records: list[dict[str, Any]], fs: Any, root: str) -> dict[str, Any]:
    """The manifest's `source.downloads`; a re-run with nothing left to stage keeps the previous manifest's."""
    summary = staged_download_summary(records)
    if summary:
        return summary
    try:
        return dict(Manifest.load(fs, root).source.get("downloads") or {})
    except Exception:
        return {}


def report_downloads(downloads: dict[str, Any]) -> None:
    """What the summary must not bury: md5 mismatches, damage, skipped members."""
    for name, d in sorted(downloads.items()):
        if d.get("missing"):
            print(f"ingest: WARNING {name} is not in the archive folder: its pairs are quarantined (missing_file)")
            continue
        expected = d.get("expected_md5", d.get("published_md5"))
        if d.get("md5_matches") is False:
            print(
                f"ingest: WARNING {name}: md5 {d['md5']} differs from the expected {expected} "
                f"({d.get('md5_source') or 'published'}), ingested as it is (--accept-checksum-mismatch): "
                "its bytes are not the ones that digest describes. Every pair was still validated on its own."
            )
        elif d.get("md5_matches", True) is None:
            print(f"ingest: WARNING {name}: no published md5 and no MD5SUMS entry: its integrity was not checked")
        elif d.get("md5_source") == "MD5SUMS" and d.get("published_md5") not in (None, expected):
            print(
                f"ingest: {name} matches the md5 its MD5SUMS states ({expected}), trusted over the published one "
                f"({d['published_md5']}) (--trust-md5sums): a re-packed or synthetic archive, not the file "
                "published on Zenodo"
            )
        if d.get("error"):
            print(f"ingest: WARNING {name}: {d['error']}; the pairs whose files were not reached are quarantined")
        for damage in d.get("damage") or []:
            print(f"ingest: WARNING {name}: {damage}")
        c = d.get("counts") or {}
        skipped = {k: c[k] for k in ("unknown", "unexpected") if c.get(k)}
        if skipped:
            print(f"ingest: {name}: members skipped {skipped} (examples in manifest.json source.downloads)")


def remove_staging(staging: str, storage: StorageOptions, remove_empty_parent: bool) -> None:
    """Delete the staged members once the manifest is written (and the default `staged/` folder if now empty)."""
    fs, root = open_fs(staging, storage)
    if fs.exists(root):
        fs.rm(root, recursive=True)
    parent = root.rsplit("/", 1)[0]
    if remove_empty_parent and fs.exists(parent) and not fs.ls(parent):
        fs.rm(parent, recursive=True)
