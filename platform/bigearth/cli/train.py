"""`bigearth train` (and jobs/train.py): a Ray Train run from a config; the same --name and --storage resume.

    bigearth train --config configs/X.yaml --data SHARDS --storage URI [--name RUN] [--set key=value ...]

Starts a local Ray when there is no cluster (`ray job submit -- python jobs/train.py ...` on a cluster).
"""

from __future__ import annotations

import argparse
import json

from bigearth.cli.common import add_storage_args, storage_from_args


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("train", help="train a classifier on a shard set (Ray Train); re-run the same --name to resume")
    p.add_argument("--config", help="YAML file under configs/ (defaults for every key otherwise)")
    p.add_argument("--data", required=True, help="shard set written by `bigearth ingest` (path or URL)")
    p.add_argument("--storage", required=True, help="where runs live: local folder or s3://bucket/prefix")
    p.add_argument("--name", help="run name (default: model and time); the same name resumes")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.lr=3e-4")
    add_storage_args(p)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from bigearth.training.config import load_config
    from bigearth.training.trainer import train

    cfg = load_config(a.config, a.set)  # a ConfigError names the key and what was expected
    result = train(cfg, a.data, a.storage, a.name, storage_from_args(a))
    print(json.dumps({"run": result.path, "metrics": result.metrics}, default=str))
    return 0
