"""`bigearth index` (and jobs/index.py): embed every pair of a shard set and upsert it into a vector index.

    bigearth index --checkpoint RUN_OR_CHECKPOINT --data SHARDS_URI --index TARGET [--collection NAME]

TARGET: a folder (the embedded engine, no server) or an http(s):// Qdrant URL (API key: --api-key or
QDRANT_API_KEY). Every run builds a new version of the collection and switches to it when complete (a service
keeps answering from the old one; a failed run leaves it); `--add` upserts into the live version instead, only when
it was built from the same checkpoint and shard set (e.g. to add a split).
"""

from __future__ import annotations

import argparse
import json

from bigearth.cli.common import (
    add_executor_argument,
    add_secret_argument,
    add_storage_args,
    executor_from_args,
    secret_from_args,
    storage_from_args,
)
from bigearth.core.outputlock import BREAK_LOCK_HELP


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("index", help="embed a shard set into the vector index (embedded engine or Qdrant)")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, or a run folder (its best checkpoint)")
    p.add_argument("--data", required=True, help="shard set (folder or URL)")
    p.add_argument("--index", required=True, help="folder (embedded engine) or http(s):// Qdrant URL")
    p.add_argument("--collection", default="bigearthnet")
    p.add_argument("--splits", nargs="+", help="splits to index (default: all)")
    add_secret_argument(p, "--api-key", "QDRANT_API_KEY", "Qdrant API key")
    p.add_argument("--actors", type=int, default=1, help="embedding actors (one model each)")
    p.add_argument("--gpus-per-actor", type=float, default=0)
    p.add_argument("--batch-size", type=int, default=128, help="pairs per model call")
    p.add_argument("--upsert-batch", type=int, default=512, help="points per write to the index")
    p.add_argument("--recreate", action="store_true", help="kept for old scripts: every run builds a new version")
    p.add_argument("--add", action="store_true", help="upsert into the live version (same checkpoint and shard set)")
    p.add_argument("--report", help="also write the JSON report here")
    p.add_argument(
        "--quantization",
        choices=["none", "int8", "binary"],
        default="int8",
        help="in-RAM copy of vectors over 64 dims, rescored with the full vectors (docs/benchmarks.md)",
    )
    p.add_argument("--break-lock", action="store_true", help=BREAK_LOCK_HELP)
    add_executor_argument(p)
    add_storage_args(p)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    """The collection is locked while it is written (build_index: `<index>/.bigearth-lock-<collection>.json` for
    the embedded engine, the marker collection `<collection>-lock` on Qdrant)."""
    from bigearth.core.records import write_json_atomic
    from bigearth.retrieval.backends import IndexSettings
    from bigearth.retrieval.indexer import build_index

    report = build_index(
        a.checkpoint,
        a.data,
        a.index,
        a.collection,
        splits=a.splits,
        storage=storage_from_args(a),
        api_key=secret_from_args(a, "--api-key", None),  # else $QDRANT_API_KEY, read by the Qdrant engine
        batch_size=a.batch_size,
        upsert_batch=a.upsert_batch,
        actors=a.actors,
        gpus_per_actor=a.gpus_per_actor,
        recreate=a.recreate,
        add=a.add,
        settings=IndexSettings(quantization=a.quantization),
        break_lock=a.break_lock,
        executor=executor_from_args(a),
    )
    print(json.dumps(report))
    if a.report:
        write_json_atomic(None, a.report, report, indent=1)
    return 0
