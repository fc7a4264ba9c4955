"""Ingest: archive (v1 or v2, extracted or as published downloads, any fsspec URL) -> Parquet shards + manifest.

From extracted folders, what the archive holds is listed first, a folder at a time (bigearth.archive.presence): a
pair whose S2 or S1 folder is absent is quarantined at once, naming the folder, and never read. The pairs to read
are cut into shards of ~`shard_size` pairs per split (a deterministic plan). Each shard is one unit
(`run_planned_shard`, a plain function), run by an executor (a Ray Data task each by default, or one after another
in this process: bigearth.execution.executors): it fetches the files of its pairs in batches of concurrent GETs,
decodes, validates, streams the good pairs into its Parquet file and writes a small report (rows, quarantined pairs
with reasons, exclusions). A shard is done when its report exists, so a killed ingest re-run with the same arguments
redoes only the unfinished shards and ends with every pair exactly once. The manifest is written last from the
reports; the quarantine (every pair with its kind and reason) and the pairs without a reference map go to Parquet
files beside it, the manifest counts them: its size does not grow with them.

From the published downloads (`*.tar.zst` / `*.tar.gz`), a staging stage comes first: one unit per download file
decompresses it once and routes every member to its shard's bucket (bigearth.archive.staging); shard tasks then
read their pairs' files from the buckets instead of the archive. Storage faults are typed exceptions
(`bigearth.core.storage.StorageError`) raised where they happen; every executor hands them back as themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bigearth.archive.catalogue import Catalogue, build_catalogue
from bigearth.archive.layouts import layout_for
from bigearth.archive.presence import Presence, find_present, missing_pairs
from bigearth.archive.reader import Excluded, Problem, fetch_pairs, read_pairs
from bigearth.archive.staging import StagedSource, download_problems, shard_entries
from bigearth.core.outputlock import LOCK_FILE, OutputLock
from bigearth.core.records import RecordError, is_local, is_temp_name, read_json, write_json_atomic
from bigearth.core.storage import BlobReader, StorageOptions, join, open_fs
from bigearth.execution.executors import Executor, Resources, default_executor
from bigearth.ingest.downloads import downloads_summary, remove_staging, report_downloads, stage_downloads
from bigearth.shards.format import (
    DEFAULT_COMPRESSION,
    FORMAT_VERSION,
    MANIFEST,
    QUARANTINE,
    QUARANTINE_SCHEMA,
    REFERENCE_MAPS_MISSING,
    Manifest,
    ShardEntry,
    ShardWriter,
    write_list,
)

log = logging.getLogger(__name__)

STATE_DIR = "_ingest"
READ_BATCH = 32  # pairs fetched per batch of concurrent GETs inside a task (the next batch is prefetched)


class IngestError(RuntimeError):
    """The output already holds a different ingest, or the job cannot proceed."""


@dataclass(frozen=True)
class ShardPlan:
    path: str  # relative to the output root
    split: str
    pairs: pa.Table  # its catalogue rows (a slice of the catalogue: no copy)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Its catalogue rows as dicts (made when asked: in the shard's task)."""
        return self.pairs.to_pylist()

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
    rows = plan.rows  # the shard's catalogue rows as dicts, made once, here in its task
    batches = [rows[i : i + READ_BATCH] for i in range(0, len(rows), READ_BATCH)]
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
    except BaseException:
        writer.abort()  # nothing of a failed task reaches the shard's path
        raise
    finished = read_report(out_fs, report_path)
    if finished is not None:  # another copy of this task (run again while this one was cut off) finished first
        writer.abort()
        return finished
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
        writer.abort()
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
    pa.default_memory_pool().release_unused()  # what decoding the metadata held (~2x the catalogue) goes back now
    archive_fs, _ = open_fs(archive, storage)
    presence = find_present(archive_fs, cat.layout, cat.pairs)  # None: not listable, every pair is read
    plans = plan_shards(cat.pairs if presence is None else cat.pairs.filter(presence.read), shard_size)
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
        absent = ""
        if presence is not None:
            absent = f"; {presence.count:,} not in the archive (quarantined; {presence.listings} folders listed)"
        print(
            f"ingest: {len(cat):,} pairs of a {cat.version} archive ({cat.total:,} in its metadata){absent}; "
            f"{sum(p.pairs.num_rows for p in plans):,} to read into {len(plans)} shards; "
            f"excluded by policy: {cat.excluded_counts}"
        )

        with ThreadPoolExecutor(16) as pool:  # concurrent GETs on object storage; an unreadable report is redone
            finished = pool.map(lambda p: read_report(out_fs, join(out_root, p.report_path)) is not None, plans)
            todo = [i for i, done in enumerate(finished) if not done]
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
        items = ShardItems(plans, records if cat.layout.downloads else None)
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


class ShardItems(Sequence[dict[str, Any]]):
    """One executor item per planned shard, made when the executor takes it: its plan and staged entries as JSON,
    its catalogue rows as Arrow IPC bytes (plain bytes that any executor carries as is; nothing large is shared or
    captured, and the local executor holds one item at a time)."""

    def __init__(self, plans: list[ShardPlan], records: list[dict[str, Any]] | None) -> None:
        self.plans, self.records = plans, records

    def __len__(self) -> int:
        return len(self.plans)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        p = self.plans[i]
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, p.pairs.schema) as w:
            w.write_table(p.pairs)
        staged = shard_entries(self.records, i) if self.records is not None else None
        return {
            "plan": json.dumps({"path": p.path, "split": p.split}),
            "pairs": sink.getvalue().to_pybytes(),
            "staged": json.dumps(staged),
        }


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
    """The unit of ingest: one planned shard in (its plan and staged entries as JSON, its catalogue rows as Arrow IPC
    bytes: plain data that any executor carries as is), its report out (`ingest_shard`)."""
    plan = json.loads(item["plan"])
    pairs = pa.ipc.open_stream(item["pairs"]).read_all()
    return ingest_shard(ShardPlan(plan["path"], plan["split"], pairs), staged=json.loads(item["staged"]), **task_args)
