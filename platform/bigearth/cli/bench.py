"""`bigearth bench input`: the training input pipeline's throughput."""

from __future__ import annotations

import argparse
import json

from bigearth.cli.common import add_storage_args, storage_from_args


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="benchmarks; `bench input` measures the training input pipeline")
    p.add_argument("what", choices=["input"])
    p.add_argument("--shards", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--bands", default="all")
    p.add_argument("--stem", action="store_true", help="also run the InputStem on each batch (CPU)")
    p.add_argument(
        "--path",
        default="rowgroups",
        choices=["rowgroups", "rows"],
        help="rowgroups: what training uses (bigearth.input.loader); rows: Ray Data's row path "
        "(open_split -> iter_torch)",
    )
    p.add_argument("--shuffle-buffer", type=int, default=2048, help="rows in the shuffle buffer (0 = off)")
    p.add_argument("--threads", type=int, help="reader threads of the rowgroups path (default: one per CPU)")
    add_storage_args(p)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from bigearth.execution.raycluster import ensure_ray
    from bigearth.input.benchmark import bench_input

    ensure_ray()
    result = bench_input(
        a.shards,
        a.split,
        a.batch_size,
        a.epochs,
        a.bands,
        storage_from_args(a),
        a.stem,
        path=a.path,
        shuffle_buffer=a.shuffle_buffer,
        threads=a.threads,
    )
    print(json.dumps(result))
    return 0
