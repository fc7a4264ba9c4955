"""`bigearth ingest` (and jobs/ingest.py): archive -> Parquet shards + manifest.json, a Ray Data job."""

from __future__ import annotations

import argparse

from bigearth.archive.layouts import list_layouts
from bigearth.cli.common import (
    add_executor_argument,
    add_storage_args,
    executor_from_args,
    patch_list,
    storage_from_args,
)
from bigearth.core.outputlock import BREAK_LOCK_HELP


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ingest", help="archive -> Parquet shards + manifest.json (a Ray Data job)")
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--archive",
        required=True,
        help="archive root: local path or fsspec URL (s3://bucket/prefix, https://mirror/record): the extracted "
        "folders or the published downloads (*.tar.zst / *.tar.gz under their names, read as streams)",
    )
    p.add_argument("--out", required=True, help="shard set to write: local path or fsspec URL")
    p.add_argument("--layout", default="auto", choices=["auto", *list_layouts()], help="default: detected")
    p.add_argument("--lists", help="v1: folder with the official lists and splits (see docs/data-format.md)")
    p.add_argument(
        "--include-snow-cloud",
        action="store_true",
        help="keep patches with seasonal snow, cloud or shadow (excluded by default, as recommended)",
    )
    p.add_argument(
        "--include-no-19-labels",
        action="store_true",
        help="keep v1 patches with no 19-class label (excluded by default)",
    )
    p.add_argument("--patches", help="restrict to these S2 patch ids: a file with one id per line, or a comma list")
    p.add_argument("--limit", type=int, help="ingest at most this many pairs (after exclusions)")
    p.add_argument("--shard-size", type=int, default=1000, help="pairs per Parquet shard (default 1000)")
    p.add_argument(
        "--compression",
        default="auto",
        choices=["auto", "none", "lz4", "zstd"],
        help="shard compression (default auto: none on a local disk, fastest to read; zstd, about half the bytes, "
        "where they cross a network: object stores, network file systems; see docs/benchmarks.md)",
    )
    p.add_argument("--concurrency", type=int, help="at most this many shard tasks at once (default: as many as CPUs)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the shard set --out holds first (refused for a folder that is not one bigearth ingest wrote)",
    )
    p.add_argument(
        "--staging",
        help="downloads only: where decompressed members wait for their shard, reachable by every node "
        "(default: OUT/_ingest/staged; needs about the downloads' uncompressed size)",
    )
    p.add_argument("--keep-staging", action="store_true", help="downloads only: keep the staged members at the end")
    p.add_argument(
        "--accept-checksum-mismatch",
        action="store_true",
        help="downloads only: ingest a download whose md5 differs from the expected one (the published md5 for "
        "a published name, else the one an MD5SUMS file beside the downloads states); without it the ingest stops "
        "before any shard",
    )
    p.add_argument(
        "--trust-md5sums",
        action="store_true",
        help="downloads only: check the downloads against the MD5SUMS file beside them even where it disagrees "
        "with the published md5 (a re-packed or synthetic archive, e.g. bigearth synth --packed); without it such "
        "an MD5SUMS stops the ingest before anything is read, as a bad mirror's would",
    )
    p.add_argument("--break-lock", action="store_true", help=BREAK_LOCK_HELP)
    add_executor_argument(p)
    add_storage_args(p)


def run(a: argparse.Namespace) -> int:
    from bigearth.core.storage import open_fs
    from bigearth.ingest.job import ingest
    from bigearth.shards.format import QUARANTINE

    m = ingest(
        a.archive,
        a.out,
        layout=a.layout,
        lists=a.lists,
        include_snow_cloud=a.include_snow_cloud,
        include_no_19_labels=a.include_no_19_labels,
        patches=patch_list(a.patches),
        limit=a.limit,
        shard_size=a.shard_size,
        compression=a.compression,
        overwrite=a.overwrite,
        storage=storage_from_args(a),
        concurrency=a.concurrency,
        staging=a.staging,
        keep_staging=a.keep_staging,
        accept_checksum_mismatch=a.accept_checksum_mismatch,
        trust_md5sums=a.trust_md5sums,
        break_lock=a.break_lock,
        executor=executor_from_args(a),
    )
    if m.quarantined_pairs:
        fs, root = open_fs(a.out, storage_from_args(a))
        first = m.quarantine_table(fs, root, limit=20).to_pylist()
        print(f"quarantined pairs (first {len(first)} of {m.quarantined_pairs:,}; all in {a.out}/{QUARANTINE}):")
        for q in first:
            print(f"  {q['patch_id']}: {q['reason']}")
    return 0
