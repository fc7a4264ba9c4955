"""Ingest: archive (v1 or v2, any fsspec URL) -> Parquet shards + manifest.json, as a Ray Data job.

The catalogue is cut into shards of ~`shard_size` pairs per split (a deterministic plan). Each shard is one Ray
task: it fetches the files of its pairs in batches of concurrent GETs, decodes with rasterio, validates, streams the
good pairs into its Parquet file and writes a small report (rows, quarantined pairs with reasons, exclusions). A
shard is done when its report exists, so a killed ingest re-run with the same arguments redoes only the unfinished
shards and ends with every pair exactly once. The manifest is written last from the reports.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bigearth.archive.catalogue import Catalogue, build_catalogue
from bigearth.archive.layout import Layout, Version
from bigearth.archive.reader import Excluded, Problem, read_pairs
from bigearth.shards import Manifest, ShardWriter
from bigearth.storage import StorageOptions, join, open_fs

log = logging.getLogger(__name__)

STATE_DIR = "_ingest"
READ_BATCH = 32  # pairs fetched per concurrent GET batch inside a task


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
        n = max(1, round(len(rows) / shard_size + 0.4999))
        size = -(-len(rows) // n)
        for i in range(n):
            chunk = rows[i * size : (i + 1) * size]
            if chunk:
                plans.append(ShardPlan(f"{split}/part-{i:05d}.parquet", split, chunk))
    return plans


def _fingerprint(catalogue: Catalogue, plans: Iterable[ShardPlan]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"version": catalogue.version, **catalogue.options}, sort_keys=True).encode())
    for p in plans:
        h.update(p.path.encode())
        for r in p.rows:
            h.update(r["patch_id"].encode())
    return h.hexdigest()


def ingest_shard(
    plan: ShardPlan, version: Version, archive: str, out: str, storage: StorageOptions, include_no_19: bool
) -> dict[str, Any]:
    """Write one shard (or return its report if a previous run finished it)."""
    src_fs, src_root = open_fs(archive, storage)
    layout = Layout(version, src_root)
    out_fs, out_root = open_fs(out, storage)
    report_path = join(out_root, plan.report_path)
    if out_fs.exists(report_path):
        return dict(json.loads(out_fs.cat(report_path)))
    out_fs.makedirs(join(out_root, plan.path.rsplit("/", 1)[0]), exist_ok=True)
    writer = ShardWriter(out_fs, join(out_root, plan.path))
    quarantined: list[dict[str, str]] = []
    excluded: dict[str, int] = {}
    try:
        for start in range(0, len(plan.rows), READ_BATCH):
            batch = plan.rows[start : start + READ_BATCH]
            for row, result in zip(batch, read_pairs(src_fs, layout, batch, include_no_19), strict=True):
                if isinstance(result, Problem):
                    quarantined.append({"patch_id": row["patch_id"], "kind": result.kind, "reason": result.message})
                elif isinstance(result, Excluded):
                    excluded[result.reason] = excluded.get(result.reason, 0) + 1
                else:
                    writer.write(result)
    finally:
        writer.close()
    report = {
        "path": plan.path,
        "split": plan.split,
        "rows": writer.rows,
        "quarantined": quarantined,
        "excluded": excluded,
    }
    out_fs.makedirs(join(out_root, plan.report_path.rsplit("/", 1)[0]), exist_ok=True)
    with out_fs.open(report_path, "w") as f:
        f.write(json.dumps(report))
    return report


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
    overwrite: bool = False,
    storage: StorageOptions | None = None,
    concurrency: int | None = None,
) -> Manifest:
    """Run the ingest job on the current Ray cluster (started locally if there is none)."""
    import ray

    from bigearth.raycluster import ensure_ray

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
    fingerprint = _fingerprint(cat, plans)
    plan_file = join(out_root, STATE_DIR, "plan.json")
    if overwrite and out_fs.exists(out_root):
        out_fs.rm(out_root, recursive=True)
    if out_fs.exists(plan_file):
        previous = json.loads(out_fs.cat(plan_file))
        if previous.get("fingerprint") != fingerprint:
            raise IngestError(
                f"{out} holds a different ingest (other archive, subset or options); "
                "use another --out or pass --overwrite"
            )
        log.info("resuming the ingest in %s", out)
    else:
        out_fs.makedirs(join(out_root, STATE_DIR), exist_ok=True)
        with out_fs.open(plan_file, "w") as f:
            f.write(json.dumps({"fingerprint": fingerprint, "archive": archive, "shards": len(plans)}))
    print(
        f"ingest: {len(cat):,} pairs of a {cat.version} archive ({cat.total:,} in its metadata) into "
        f"{len(plans)} shards; excluded by policy: {cat.excluded_counts}"
    )

    ensure_ray()
    items = [{"i": i} for i in range(len(plans))]
    plans_ref = ray.put(plans)

    def run(item: dict[str, Any]) -> dict[str, Any]:
        plan = ray.get(plans_ref)[item["i"]]
        return {"report": json.dumps(ingest_shard(plan, cat.version, archive, out, storage, include_no_19_labels))}

    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map(
        run, concurrency=concurrency, num_cpus=1
    )
    reports = [json.loads(r["report"]) for r in ds.iter_rows()]
    manifest = _manifest(cat, reports, archive)
    manifest.save(out_fs, out_root)
    pq.write_table(cat.excluded, join(out_root, STATE_DIR, "excluded.parquet"), filesystem=out_fs)
    q = len(manifest.quarantined)
    print(
        f"ingest: wrote {manifest.pairs:,} pairs {manifest.splits} in {len(manifest.shards)} shards to {out}; "
        f"quarantined {q}; excluded {manifest.excluded}"
    )
    return manifest


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
        shards=[{"path": r["path"], "rows": r["rows"], "split": r["split"]} for r in reports if r["rows"]],
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
