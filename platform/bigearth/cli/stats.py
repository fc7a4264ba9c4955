"""`bigearth stats`: per-band mean/std of a split, with Ray Data."""

from __future__ import annotations

import argparse
import json

from bigearth.cli.common import add_executor_argument, add_storage_args, executor_from_args, storage_from_args


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("stats", help="per-band mean/std of a split, with Ray Data")
    p.add_argument("--shards", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--out", help="also write the JSON here")
    add_executor_argument(p)
    add_storage_args(p)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from bigearth.input.stats import band_stats

    stats = band_stats(a.shards, a.split, storage_from_args(a), executor_from_args(a))
    text = json.dumps(stats, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    print(text)
    return 0
