"""Ingest: archive (v1 or v2, extracted or as published downloads, any fsspec URL) -> Parquet shards + manifest.

The catalogue is cut into shards of ~`shard_size` pairs per split (a deterministic plan). Each shard is one unit
(`run_planned_shard`, a plain function), run by an executor (a Ray Data task each by default, or one after another
in this process: bigearth.execution.executors): it fetches the files of its pairs in batches of concurrent GETs,
decodes, validates, streams the good pairs into its Parquet file and writes a small report (rows, quarantined pairs
with reasons, exclusions). A shard is done when its report exists, so a killed ingest re-run with the same arguments
redoes only the unfinished shards and ends with every pair exactly once. The manifest is written last from the reports.

From the published downloads (`*.tar.zst` / `*.tar.gz`), a staging stage comes first: one unit per download file
decompresses it once and routes every member to its shard's bucket (bigearth.archive.staging); shard tasks then
read their pairs' files from the buckets instead of the archive. Storage faults are typed exceptions
(`bigearth.core.storage.StorageError`) raised where they happen; every executor hands them back as themselves.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bigearth.archive.catalogue import Catalogue, build_catalogue
from bigearth.archive.layouts import layout_for
from bigearth.archive.reader import Excluded, Problem, fetch_pairs, read_pairs
from bigearth.archive.staging import StagedSource, download_problems, shard_entries
from bigearth.core.outputlock import LOCK_FILE, OutputLock
from bigearth.core.records import RecordError, is_temp_name, read_json, write_json_atomic
from bigearth.core.storage import BlobReader, StorageOptions, join, open_fs
from bigearth.execution.executors import Executor, Resources, default_executor
from bigearth.ingest.downloads import downloads_summary, remove_staging, report_downloads, stage_downloads
from bigearth.shards.format import DEFAULT_COMPRESSION, FORMAT_VERSION, MANIFEST, Manifest, ShardEntry, ShardWriter

log = logging.getLogger(__name__)

STATE_DIR = "_ingest"
READ_BATCH = 32  # pairs fetched per batch of concurrent GETs inside a task (the next batch is prefetched)


class IngestError(RuntimeError):
    """The output already holds a different ingest, or the job cannot proceed."""


@dataclass(frozen=True)
class ShardPlan:
    path: str  # relative to the output root
    split: str
    rows: list[dict[str, Any]]  # catalogue rows

    @property
    def report_path(self) -> str:
        return join(STATE_DIR, "reports", self.path.replace(".parquet", ".json"))


def refuse_foreign_output(fs: Any, root: str, url: str) -> None:
    """`--overwrite` deletes only an empty folder or a shard set this tool wrote: its `_ingest/plan.json` or
    `manifest.json` is there and every entry is one an ingest writes (the manifest, `_ingest/`, split folders of
    `part-*.parquet`). Anything else (a typo'd `--out` pointing at a home folder, a bucket prefix holding other
    data) is refused, naming what is there."""
    entries = [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(root, detail=False)]
    entries = [e for e in entries if e != LOCK_FILE and not is_temp_name(e)]  # ours: the lock, a killed write
    if not entries:
        return
    if "manifest.json" not in entries and not fs.exists(join(root, STATE_DIR, "plan.json")):
        raise IngestError(
            f"--overwrite: {url} is not a shard set written by bigearth ingest (no manifest.json or "
            f"{STATE_DIR}/plan.json; it holds {sorted(entries)[:5]}): nothing deleted; pass another --out"
        )
    for name in entries:
        if name in ("manifest.json", STATE_DIR):
            continue
        path = join(root, name)
        inside = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)] if fs.isdir(path) else None
        if inside is None or not all(p.startswith("part-") and p.endswith(".parquet") for p in inside):
            raise IngestError(
                f"--overwrite: {url} holds {name!r}, which bigearth ingest does not write: nothing deleted; "
                "move it away or pass another --out"
            )


def plan_shards(catalogue: Catalogue, shard_size: int) -> list[ShardPlan]:
    """Deterministic: rows grouped by split, sorted by patch id, cut into shards of at most `shard_size`."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    by_split: dict[str, list[dict[str, Any]]] = {}
    for row in catalogue.pairs.to_pylist():
        by_split.setdefault(row["split"] or "unassigned", []).append(row)
    plans = []
    for split in sorted(by_split):
        rows = sorted(by_split[split], key=lambda r: r["patch_id"])
        n = max(1, -(-len(rows) // shard_size))  # ceil: no shard ever exceeds shard_size
        size = -(-len(rows) // n)
        for i in range(n):
            chunk = rows[i * size : (i + 1) * size]
            if chunk:
                plans.append(ShardPlan(f"{split}/part-{i:05d}.parquet", split, chunk))
    return plans


def _fingerprint(catalogue: Catalogue, plans: Iterable[ShardPlan], compression: str) -> str:
    h = hashlib.sha256()
    # the shard format and compression too: a half-done ingest of another format or codec is never resumed into
    options = {"version": catalogue.version, **catalogue.options, "format": FORMAT_VERSION, "compression": compression}
    h.update(json.dumps(options, sort_keys=True).encode())
    for p in plans:
        h.update(p.path.encode())
        for r in p.rows:
            h.update(r["patch_id"].encode())
    return h.hexdigest()


def ingest_shard(
    plan: ShardPlan,
    layout: str,
    archive: str,
    out: str,
    storage: StorageOptions,
    include_no_19: bool,
    compression: str = DEFAULT_COMPRESSION,
    staging: str | None = None,
    staged: list[list[Any]] | None = None,
    problems: dict[str, str] | None = None,
    reference_maps: bool = False,
) -> dict[str, Any]:
    """Write one shard (or return its report if a previous run finished it).

    From downloads, `staged` lists the (download, spill, row group) holding this shard's files under `staging`.
    """
    reader = BlobReader(archive, storage)
    lay = layout_for(layout, reader.root)
    lay.reference_maps = reference_maps
    out_fs, out_root = open_fs(out, storage)
    report_path = join(out_root, plan.report_path)
    done = read_report(out_fs, report_path)
    if done is not None:
        return done
    out_fs.makedirs(join(out_root, plan.path.rsplit("/", 1)[0]), exist_ok=True)
    writer = ShardWriter(out_fs, join(out_root, plan.path), compression, reference_maps)
    quarantined: list[dict[str, str]] = []
    excluded: dict[str, int] = {}
    batches = [plan.rows[i : i + READ_BATCH] for i in range(0, len(plan.rows), READ_BATCH)]
    if staged is not None:
        assert staging is not None
        _from_staged(
            lambda: StagedSource(staging, storage, staged, problems or {}),
            lay,
            reader,
            batches,
            include_no_19,
            writer,
            quarantined,
            excluded,
        )
        batches = []
    try:
        # Fetch batch k+1 (I/O threads) while batch k is decoded and validated.
        with ThreadPoolExecutor(1) as prefetch:
            pending = prefetch.submit(fetch_pairs, reader, lay, batches[0]) if batches else None
            for k, batch in enumerate(batches):
                blobs = pending.result() if pending else {}
                pending = prefetch.submit(fetch_pairs, reader, lay, batches[k + 1]) if k + 1 < len(batches) else None
                _consume(batch, read_pairs(reader, lay, batch, include_no_19, blobs), writer, quarantined, excluded)
    finally:
        writer.close()
    report = {
        "reference_map_missing": writer.reference_map_missing,
        "path": plan.path,
        "split": plan.split,
        "rows": writer.rows,
        "quarantined": quarantined,
        "excluded": excluded,
    }
    out_fs.makedirs(join(out_root, plan.report_path.rsplit("/", 1)[0]), exist_ok=True)
    write_json_atomic(out_fs, report_path, report)  # the shard is done once this exists: written whole
    return report


def read_report(fs: Any, path: str) -> dict[str, Any] | None:
    """A finished shard's report, or None: absent, or unreadable (cut short by an older writer killed mid-write;
    then it is deleted, said in a warning, and the shard is written again)."""
    try:
        return read_json(fs, path, "shard report")
    except FileNotFoundError:
        return None
    except RecordError as e:
        log.warning("%s: this shard is written again", e)
        print(f"ingest: WARNING {e}: this shard is written again")
        fs.rm_file(path)
        return None


def _from_staged(
    make_source: Callable[[], StagedSource],
    lay: Any,
    reader: BlobReader,
    batches: list[list[dict[str, Any]]],
    include_no_19: bool,
    writer: ShardWriter,
    quarantined: list[dict[str, str]],
    excluded: dict[str, int],
) -> None:
    try:
        source = make_source()  # inside the try: a failed segment read still closes the shard writer
        for batch in batches:
            results = read_pairs(reader, lay, batch, include_no_19, source.fetch(lay, batch))
            _consume(batch, results, writer, quarantined, excluded)
    except BaseException:
        writer.close()
        raise


def _consume(
    batch: list[dict[str, Any]],
    results: list[Any],
    writer: ShardWriter,
    quarantined: list[dict[str, str]],
    excluded: dict[str, int],
) -> None:
    for row, result in zip(batch, results, strict=True):
        if isinstance(result, Problem):
            quarantined.append({"patch_id": row["patch_id"], "kind": result.kind, "reason": result.message})
        elif isinstance(result, Excluded):
            excluded[result.reason] = excluded.get(result.reason, 0) + 1
        else:
            if writer.reference_maps and result.get("reference_map") is None:
                writer.reference_map_missing.append(row["patch_id"])
            writer.write(result)


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
    plans = plan_shards(cat, shard_size)
    out_fs, out_root = open_fs(out, storage)
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
            if previous.get("fingerprint") != fingerprint:
                raise IngestError(
                    f"{out} holds a different ingest (other archive, subset or options); "
                    "use another --out or pass --overwrite"
                )
            log.info("resuming the ingest in %s", out)
        else:
            out_fs.makedirs(join(out_root, STATE_DIR), exist_ok=True)
            write_json_atomic(out_fs, plan_file, {"fingerprint": fingerprint, "archive": archive, "shards": len(plans)})
        print(
            f"ingest: {len(cat):,} pairs of a {cat.version} archive ({cat.total:,} in its metadata) into "
            f"{len(plans)} shards; excluded by policy: {cat.excluded_counts}"
        )

        with ThreadPoolExecutor(16) as pool:  # concurrent GETs on object storage; an unreadable report is redone
            finished = pool.map(lambda p: read_report(out_fs, join(out_root, p.report_path)) is not None, plans)
            todo = [i for i, done in enumerate(finished) if not done]
        staging_url = join(staging or join(out, STATE_DIR, "staged"), fingerprint[:16])
        records: list[dict[str, Any]] = []
        if cat.layout.downloads:
            records = stage_downloads(
                cat,
                {i: plans[i].rows for i in todo},
                archive,
                staging_url,
                storage,
                progress,
                accept_checksum_mismatch,
                trust_md5sums,
                executor,
            )
        problems = download_problems(records)
        # One item (= one block = one task) per shard, carrying its own rows: nothing large is shared or captured.
        items = [
            {
                "plan": json.dumps({"path": p.path, "split": p.split, "rows": p.rows}, default=str),
                "staged": json.dumps(shard_entries(records, i) if cat.layout.downloads else None),
            }
            for i, p in enumerate(plans)
        ]
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
        reports = list(
            executor.map(unit, items, desc="ingest shards", resources=Resources(cpus=1, concurrency=concurrency))
        )
        manifest = _manifest(cat, reports, archive)
        manifest.source["compression"] = compression
        if cat.layout.reference_maps:
            missing = sorted(p for r in reports for p in r.get("reference_map_missing", []))
            manifest.source["reference_maps"] = {"rows": manifest.pairs - len(missing), "missing": missing}
        if cat.layout.downloads:
            manifest.source["downloads"] = downloads_summary(records, out_fs, out_root)
        lock.verify()  # taken over by another writer meanwhile (--break-lock): that one writes the manifest
        manifest.save(out_fs, out_root)
        pq.write_table(cat.excluded, join(out_root, STATE_DIR, "excluded.parquet"), filesystem=out_fs)
        q = len(manifest.quarantined)
        print(
            f"ingest: wrote {manifest.pairs:,} pairs {manifest.splits} in {len(manifest.shards)} shards to {out}; "
            f"quarantined {q}; excluded {manifest.excluded}"
        )
        if cat.layout.downloads:
            report_downloads(manifest.source["downloads"])
            if not keep_staging:
                remove_staging(staging_url, storage, remove_empty_parent=staging is None)
        return manifest


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


def run_planned_shard(item: dict[str, Any], **task_args: Any) -> dict[str, Any]:
    """The unit of ingest: one planned shard in (its plan and staged entries as JSON, plain text that any executor
    carries as is), its report out (`ingest_shard`)."""
    plan = ShardPlan(**json.loads(item["plan"]))
    return ingest_shard(plan, staged=json.loads(item["staged"]), **task_args)


def _manifest(cat: Catalogue, reports: list[dict[str, Any]], archive: str) -> Manifest:
    reports.sort(key=lambda r: r["path"])
    excluded = dict(cat.excluded_counts)
    splits: dict[str, int] = {}
    for r in reports:
        splits[r["split"]] = splits.get(r["split"], 0) + r["rows"]
        for reason, n in r["excluded"].items():
            excluded[reason] = excluded.get(reason, 0) + n
    return Manifest(
        pairs=sum(r["rows"] for r in reports),
        splits=splits,
        shards=[ShardEntry(r["path"], r["split"], r["rows"]) for r in reports if r["rows"]],
        quarantined=sorted((q for r in reports for q in r["quarantined"]), key=lambda q: q["patch_id"]),
        excluded=excluded,
        source={"archive": archive, "layout": cat.version, "catalogue_pairs": cat.total, **cat.options},
    )


def quarantine_table(manifest: Manifest) -> pa.Table:
    """The quarantine as a table (patch_id, kind, reason)."""
    return pa.Table.from_pylist(
        manifest.quarantined or [],
        schema=pa.schema([("patch_id", pa.string()), ("kind", pa.string()), ("reason", pa.string())]),
    )
