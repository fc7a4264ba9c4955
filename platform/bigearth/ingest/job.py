"""Ingest: archive (v1 or v2, extracted or as published downloads, any fsspec URL) -> Parquet shards + manifest.

From extracted folders, what the archive holds is listed first, a folder at a time (bigearth.archive.presence): a
pair whose S2 or S1 folder is absent is quarantined at once, naming the folder, and never read. The pairs to read
are cut into shards of ~`shard_size` pairs per split (a deterministic plan). Each shard is one unit
(bigearth.ingest.shard: `run_planned_shard`, a plain function) run by an executor (a Ray Data task each by default,
or one after another in this process: bigearth.execution.executors); it writes its Parquet file and a small report.
A shard is done when its report exists, so a killed ingest re-run with the same arguments redoes only the
unfinished shards and ends with every pair exactly once. The manifest is written last from the reports
(bigearth.ingest.accounting); the quarantine (every pair with its kind and reason) and the pairs without a reference
map go to Parquet files beside it, the manifest counts them: its size does not grow with them.

From the published downloads (`*.tar.zst` / `*.tar.gz`), a staging stage comes first (bigearth.ingest.downloads):
one unit per download file decompresses it once and routes every member to its shard's bucket
(bigearth.archive.staging); shard tasks then read their pairs' files from the buckets instead of the archive.
Storage faults are typed exceptions (`bigearth.core.storage.StorageError`) raised where they happen; every executor
hands them back as themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bigearth.archive.catalogue import Catalogue, build_catalogue
from bigearth.archive.presence import find_present, missing_pairs
from bigearth.archive.staging import download_problems
from bigearth.core.outputlock import LOCK_FILE, OutputLock
from bigearth.core.records import RecordError, is_local, is_temp_name, read_json, write_json_atomic
from bigearth.core.storage import StorageOptions, join, open_fs
from bigearth.execution.executors import Executor, Resources, default_executor
from bigearth.ingest.accounting import Tally
from bigearth.ingest.downloads import (
    downloads_summary,
    pack_buckets,
    remove_staging,
    report_downloads,
    stage_downloads,
)
from bigearth.ingest.shard import STATE_DIR, ShardItems, ShardPlan, read_report, run_planned_shard
from bigearth.shards.codecs import resolve_compression
from bigearth.shards.format import (
    AUTO_COMPRESSION,
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    FORMAT_VERSION,
    MANIFEST,
    QUARANTINE,
    QUARANTINE_SCHEMA,
    REFERENCE_MAPS_MISSING,
    Manifest,
    write_list,
)

log = logging.getLogger(__name__)


class IngestError(RuntimeError):
    """The output already holds a different ingest, or the job cannot proceed."""


def refuse_foreign_output(fs: Any, root: str, url: str) -> None:
    """`--overwrite` deletes only an empty folder or a shard set this tool wrote: its `_ingest/plan.json` or
    `manifest.json` is there and every entry is one an ingest writes (the manifest, `_ingest/`, split folders of
    `part-*.parquet`). Anything else (a typo'd `--out` pointing at a home folder, a bucket prefix holding other
    data) is refused, naming what is there."""
    entries = [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(root, detail=False)]
    entries = [e for e in entries if e != LOCK_FILE and not is_temp_name(e)]  # ours: the lock, a killed write
    if not entries:
        return
    if MANIFEST not in entries and not fs.exists(join(root, STATE_DIR, "plan.json")):
        raise IngestError(
            f"--overwrite: {url} is not a shard set written by bigearth ingest (no manifest.json or "
            f"{STATE_DIR}/plan.json; it holds {sorted(entries)[:5]}): nothing deleted; pass another --out"
        )
    for name in entries:
        if name in (MANIFEST, QUARANTINE, REFERENCE_MAPS_MISSING, STATE_DIR):
            continue
        path = join(root, name)
        inside = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)] if fs.isdir(path) else None
        inside = None if inside is None else [p for p in inside if not is_temp_name(p)]  # a killed writer's
        if inside is None or not all(p.startswith("part-") and p.endswith(".parquet") for p in inside):
            raise IngestError(
                f"--overwrite: {url} holds {name!r}, which bigearth ingest does not write: nothing deleted; "
                "move it away or pass another --out"
            )


def plan_shards(pairs: pa.Table, shard_size: int) -> list[ShardPlan]:
    """Deterministic: catalogue rows grouped by split, sorted by patch id, cut into shards of at most `shard_size`
    (each a slice of one sorted table per split: no row is copied into Python)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    split = pc.fill_null(pairs["split"], "unassigned")
    plans = []
    for name in sorted(str(s) for s in pc.unique(split).to_pylist()):
        rows = pairs.filter(pc.equal(split, name)).sort_by("patch_id")
        n = max(1, -(-rows.num_rows // shard_size))  # ceil: no shard ever exceeds shard_size
        size = -(-rows.num_rows // n)
        for i in range(n):
            chunk = rows.slice(i * size, size)
            if chunk.num_rows:
                plans.append(ShardPlan(f"{name}/part-{i:05d}.parquet", name, chunk))
    return plans


def _fingerprint(catalogue: Catalogue, plans: Iterable[ShardPlan], compression: str) -> str:
    h = hashlib.sha256()
    # the shard format and compression too: a half-done ingest of another format or codec is never resumed into
    options = {"version": catalogue.version, **catalogue.options, "format": FORMAT_VERSION, "compression": compression}
    h.update(json.dumps(options, sort_keys=True).encode())
    for p in plans:
        h.update(p.path.encode())
        for patch_id in p.pairs["patch_id"].to_pylist():
            h.update(patch_id.encode())
    return h.hexdigest()


def ingest(
    archive: str,
    out: str,
    *,
    layout: str = "auto",
    lists: str | None = None,
    include_snow_cloud: bool = False,
    include_no_19_labels: bool = False,
    patches: Iterable[str] | None = None,
    limit: int | None = None,
    shard_size: int = 1000,
    compression: str = DEFAULT_COMPRESSION,
    overwrite: bool = False,
    storage: StorageOptions | None = None,
    concurrency: int | None = None,
    staging: str | None = None,
    keep_staging: bool = False,
    progress: bool = True,
    accept_checksum_mismatch: bool = False,
    trust_md5sums: bool = False,
    break_lock: bool = False,
    executor: Executor | None = None,
) -> Manifest:
    """Run the ingest job: its shards through `executor` (default: Ray, the cluster this process is attached to;
    `LocalExecutor`: one after another in this process, no Ray).

    `out` is locked while the job runs (bigearth.core.outputlock); `break_lock` takes another writer's lock over.

    `staging` (downloads only): where the decompressed members wait for their shard, reachable by every node
    (default: `<out>/_ingest/staged`); deleted when the manifest is written unless `keep_staging`. A download
    whose md5 is not the expected one (the published one for a published name, else its `MD5SUMS` entry) stops
    the ingest before any shard is written (ChecksumMismatch) unless `accept_checksum_mismatch`; so does an
    `MD5SUMS` entry that disagrees with a published md5, unless `trust_md5sums` (a re-packed or synthetic archive:
    its `MD5SUMS` digests then replace the published ones). A store that stays down raises `StorageUnavailable`
    (a re-run resumes), whichever the executor.
    """
    executor = default_executor(executor)
    storage = storage or StorageOptions.from_env()
    cat = build_catalogue(
        archive,
        version=layout,
        lists=lists,
        include_snow_cloud=include_snow_cloud,
        include_no_19_labels=include_no_19_labels,
        patches=patches,
        limit=limit,
        storage=storage,
    )
    pa.default_memory_pool().release_unused()  # what decoding the metadata held (~2x the catalogue) goes back now
    archive_fs, _ = open_fs(archive, storage)
    presence = find_present(archive_fs, cat.layout, cat.pairs)  # None: not listable, every pair is read
    plans = plan_shards(cat.pairs if presence is None else cat.pairs.filter(presence.read), shard_size)
    out_fs, out_root = open_fs(out, storage)
    requested, compression = compression, resolve_compression(compression, out)
    fingerprint = _fingerprint(cat, plans, compression)
    # one writer per output: a second ingest into `out` is refused naming this one (bigearth.core.outputlock)
    with OutputLock(out, "ingest", storage, break_lock=break_lock) as lock:
        plan_file = join(out_root, STATE_DIR, "plan.json")
        if overwrite and out_fs.exists(out_root):
            refuse_foreign_output(out_fs, out_root, out)
            for entry in out_fs.ls(out_root, detail=False):  # all but our own lock
                if entry.rstrip("/").rsplit("/", 1)[-1] != LOCK_FILE:
                    out_fs.rm(entry, recursive=True)
        previous = _read_plan(out_fs, out_root, plan_file)
        if previous is not None:
            if previous.get("fingerprint") != fingerprint and requested == AUTO_COMPRESSION:
                # an ingest begun with another codec (named, or an earlier version's default) resumes in that codec
                for other in COMPRESSIONS:
                    if _fingerprint(cat, plans, other) == previous.get("fingerprint"):
                        compression, fingerprint = other, previous["fingerprint"]
                        log.info("resuming with the codec it began with: %s", other)
                        break
            if previous.get("fingerprint") != fingerprint:
                raise IngestError(
                    f"{out} holds a different ingest (other archive, subset or options); "
                    "use another --out or pass --overwrite"
                )
            log.info("resuming the ingest in %s", out)
        else:
            out_fs.makedirs(join(out_root, STATE_DIR), exist_ok=True)
            write_json_atomic(out_fs, plan_file, {"fingerprint": fingerprint, "archive": archive, "shards": len(plans)})
        absent = ""
        if presence is not None:
            absent = f"; {presence.count:,} not in the archive (quarantined; {presence.listings} folders listed)"
        print(
            f"ingest: {len(cat):,} pairs of a {cat.version} archive ({cat.total:,} in its metadata){absent}; "
            f"{sum(p.pairs.num_rows for p in plans):,} to read into {len(plans)} shards; "
            f"excluded by policy: {cat.excluded_counts}; shards compressed: {compression}"
        )

        groups_file = join(out_root, STATE_DIR, "groups.json")
        # the packing of an earlier run of this ingest
        groups = _read_groups(out_fs, groups_file, [p.split for p in plans])
        units = groups or [[i] for i in range(len(plans))]
        with ThreadPoolExecutor(16) as pool:  # concurrent GETs on object storage; an unreadable report is redone
            finished = list(
                pool.map(lambda g: read_report(out_fs, join(out_root, plans[g[0]].report_path)) is not None, units)
            )
            todo = [i for g, done in zip(units, finished, strict=True) if not done for i in g]
        staging_url = join(staging or join(out, STATE_DIR, "staged"), fingerprint[:16])
        records: list[dict[str, Any]] = []
        if cat.layout.downloads:
            records = stage_downloads(
                cat,
                {i: plans[i].pairs for i in todo},
                archive,
                staging_url,
                storage,
                progress,
                accept_checksum_mismatch,
                trust_md5sums,
                executor,
            )
            if groups is None and not any(finished):  # packed once, before any shard: a re-run reads the packing
                groups = pack_buckets([p.split for p in plans], records, shard_size)
                write_json_atomic(out_fs, groups_file, {"shards": len(plans), "groups": groups})
                if len(groups) < len(plans):
                    print(
                        f"ingest: the downloads hold {_present(records):,} of the planned pairs: "
                        f"{len(plans)} planned shards packed into {len(groups)}"
                    )
        problems = download_problems(records)
        task_args: dict[str, Any] = {
            "layout": cat.layout.name,
            "archive": archive,
            "out": out,
            "storage": storage,
            "include_no_19": include_no_19_labels,
            "compression": compression,
            "staging": staging_url,
            "problems": problems,
            "reference_maps": cat.layout.reference_maps,
        }
        unit = partial(run_planned_shard, **task_args)
        items = ShardItems(plans, records if cat.layout.downloads else None, groups)
        tally = Tally(cat)
        resources = Resources(cpus=1, concurrency=concurrency)
        for report in executor.map(unit, items, desc="ingest shards", resources=resources):
            tally.add(report)  # each report is kept as counts and Arrow rows, not as its dicts
        manifest = tally.manifest(archive)
        manifest.source["compression"] = compression
        lock.verify()  # taken over by another writer meanwhile (--break-lock): that one writes the manifest
        not_there = missing_pairs(cat.layout, cat.pairs, presence) if presence is not None else iter(())
        quarantined = write_list(out_fs, join(out_root, QUARANTINE), tally.quarantine(not_there), QUARANTINE_SCHEMA)
        kinds = tally.quarantine_kinds(presence)
        assert quarantined == sum(kinds.values()), (quarantined, kinds)
        manifest.source["quarantine"] = {"pairs": quarantined, "kinds": kinds, "file": QUARANTINE}
        if cat.layout.reference_maps:
            missing = pa.table({"patch_id": tally.reference_map_missing()})
            schema = pa.schema([("patch_id", pa.string())])
            write_list(out_fs, join(out_root, REFERENCE_MAPS_MISSING), [missing], schema)
            manifest.source["reference_maps"] = {
                "rows": manifest.pairs - missing.num_rows,
                "missing_pairs": missing.num_rows,
                "file": REFERENCE_MAPS_MISSING,
            }
        if cat.layout.downloads:
            manifest.source["downloads"] = downloads_summary(records, out_fs, out_root)
        lock.verify()  # again: the lists above take a while on a large quarantine
        manifest.save(out_fs, out_root)  # last: the shard set is whole once it exists
        pq.write_table(cat.excluded, join(out_root, STATE_DIR, "excluded.parquet"), filesystem=out_fs)
        _remove_temporaries(out_fs, out_root)
        print(
            f"ingest: wrote {manifest.pairs:,} pairs {manifest.splits} in {len(manifest.shards)} shards to {out}; "
            f"quarantined {manifest.quarantined_pairs:,} {manifest.quarantine_kinds} (listed in {QUARANTINE}); "
            f"excluded {manifest.excluded}"
        )
        if cat.layout.downloads:
            report_downloads(manifest.source["downloads"])
            if not keep_staging:
                remove_staging(staging_url, storage, remove_empty_parent=staging is None)
        return manifest


def _remove_temporaries(fs: Any, root: str) -> None:
    """Delete what killed shard writers left in the split folders (their temporary names: `ShardWriter`); every
    shard is finished once the manifest exists, so none of them is still wanted."""
    if not is_local(fs):
        return  # object storage has no temporaries: an upload that never completed left nothing
    for folder in fs.ls(root, detail=False):
        if fs.isdir(folder) and folder.rstrip("/").rsplit("/", 1)[-1] != STATE_DIR:
            for entry in fs.ls(folder, detail=False):
                if is_temp_name(entry.rstrip("/").rsplit("/", 1)[-1]):
                    with contextlib.suppress(FileNotFoundError):
                        fs.rm_file(entry)


def _read_groups(fs: Any, path: str, splits: list[str]) -> list[list[int]] | None:
    """The packing an earlier run of this ingest wrote (downloads only), or None. It is written before any shard,
    and the plan it packs is the one the fingerprint fixes; one that does not cover that plan once, in runs of
    consecutive planned shards of one split, is refused."""
    hint = "pass --overwrite to start again"
    try:
        record = read_json(fs, path, "shard packing")
    except FileNotFoundError:
        return None
    except RecordError as e:
        raise IngestError(f"{e}; {hint}") from None
    groups = record.get("groups") if isinstance(record, dict) else None
    ok = isinstance(groups, list) and all(
        isinstance(g, list) and g and all(isinstance(i, int) and 0 <= i < len(splits) for i in g) for g in groups
    )
    if ok:
        flat = [i for g in groups for i in g]  # type: ignore[union-attr]
        ok = (
            record.get("shards") == len(splits)
            and flat == list(range(len(splits)))
            and all(len({splits[i] for i in g}) == 1 for g in groups)  # type: ignore[union-attr]
        )
    if not ok:
        raise IngestError(
            f"{path}: expected the packing of the {len(splits)} planned shards (each once, in order, runs of one "
            f"split), found {str(record)[:200]}; {hint}"
        )
    return groups  # type: ignore[return-value]


def _present(records: list[dict[str, Any]]) -> int:
    """Pairs the downloads hold of the planned ones (the fewer of S2 patches and S1 folders staged)."""
    counts = [sum(int(n) for n in r.get("buckets", {}).values()) for r in records if r.get("kind") in ("s1", "s2")]
    return min(counts) if counts else 0


def _read_plan(fs: Any, root: str, plan_file: str) -> dict[str, Any] | None:
    """The previous ingest's plan, or None. An unreadable plan (cut short by an older writer killed mid-write)
    is written again when no shard was started after it (it is written before any); otherwise it cannot be
    told whether those shards belong to this ingest, so the output is refused."""
    try:
        return read_json(fs, plan_file, "ingest plan")
    except FileNotFoundError:
        return None
    except RecordError as e:
        if fs.exists(join(root, STATE_DIR, "reports")) or fs.exists(join(root, MANIFEST)):
            raise IngestError(
                f"{e}, and shards exist: whether they belong to this ingest cannot be told; "
                "pass --overwrite to start again, or another --out"
            ) from None
        print(f"ingest: WARNING {e}: no shard was written after it, so it is written again")
        return None
