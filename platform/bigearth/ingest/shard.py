"""One unit of the ingest job (bigearth.ingest.job): one planned shard of pairs into its Parquet file and a report.

The unit (`run_planned_shard`, a plain function that any executor runs; its items made by `ShardItems`) fetches the
files of its pairs in batches of concurrent GETs (the next batch prefetched), or reads them from the staged buckets
of the downloads (bigearth.archive.staging); it decodes, validates, streams the good pairs into its Parquet file and
writes a small report (rows, quarantined pairs with reasons, exclusions). A shard is done when its report exists: a
re-run returns the report instead of writing the shard again. A writer that fails, or finds the report written
meanwhile by another copy of its task, gives the shard up: nothing of it reaches the shard's path.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from bigearth.archive.layouts import layout_for
from bigearth.archive.reader import Excluded, Problem, fetch_pairs, read_pairs
from bigearth.archive.staging import StagedSource, shard_entries
from bigearth.core.records import RecordError, read_json, write_json_atomic
from bigearth.core.storage import BlobReader, StorageOptions, join, open_fs
from bigearth.shards.format import ShardWriter

log = logging.getLogger(__name__)

STATE_DIR = "_ingest"  # the ingest's own records in the output: plan, shard reports, staging
READ_BATCH = 32  # pairs fetched per batch of concurrent GETs inside a task (the next batch is prefetched)


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


def ingest_shard(
    plan: ShardPlan,
    layout: str,
    archive: str,
    out: str,
    storage: StorageOptions,
    include_no_19: bool,
    compression: str = "lz4",
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


class ShardItems(Sequence[dict[str, Any]]):
    """One executor item per shard to write, made when the executor takes it: its plan and staged entries as JSON,
    its catalogue rows as Arrow IPC bytes (plain bytes that any executor carries as is; nothing large is shared or
    captured, and the local executor holds one item at a time). `groups`: the planned shards each writes (from
    downloads, consecutive sparse ones are packed into one: `bigearth.ingest.downloads.pack_buckets`; it takes the
    path of the first); default one each."""

    def __init__(
        self, plans: list[ShardPlan], records: list[dict[str, Any]] | None, groups: list[list[int]] | None = None
    ) -> None:
        self.plans, self.records = plans, records
        self.groups = groups if groups is not None else [[i] for i in range(len(plans))]

    def __len__(self) -> int:
        return len(self.groups)

    def plan(self, g: int) -> ShardPlan:
        """The shard item `g` writes: the first planned shard's path, every planned shard's catalogue rows."""
        members = [self.plans[i] for i in self.groups[g]]
        if len(members) == 1:
            return members[0]
        return ShardPlan(members[0].path, members[0].split, pa.concat_tables([m.pairs for m in members]))

    def __getitem__(self, g: int) -> dict[str, Any]:  # type: ignore[override]
        p = self.plan(g)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, p.pairs.schema) as w:
            w.write_table(p.pairs)
        staged = None
        if self.records is not None:
            staged = [e for i in self.groups[g] for e in shard_entries(self.records, i)]
        return {
            "plan": json.dumps({"path": p.path, "split": p.split}),
            "pairs": sink.getvalue().to_pybytes(),
            "staged": json.dumps(staged),
        }


def run_planned_shard(item: dict[str, Any], **task_args: Any) -> dict[str, Any]:
    """The unit of ingest: one planned shard in (its plan and staged entries as JSON, its catalogue rows as Arrow IPC
    bytes: plain data that any executor carries as is), its report out (`ingest_shard`)."""
    plan = json.loads(item["plan"])
    pairs = pa.ipc.open_stream(item["pairs"]).read_all()
    return ingest_shard(ShardPlan(plan["path"], plan["split"], pairs), staged=json.loads(item["staged"]), **task_args)
