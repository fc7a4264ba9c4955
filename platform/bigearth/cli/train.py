"""`bigearth train` (and jobs/train.py): a Ray Train run from a config; the same --name and --storage resume.

    bigearth train --config configs/X.yaml --data SHARDS --storage URI [--name RUN] [--set key=value ...]
                   [--executor ray|local]

With `--executor ray` (the default) it attaches to the cluster (`ray job submit -- python jobs/train.py ...`) or
starts a local Ray; `--executor local` trains in this process with no Ray (a laptop run, a small job).
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
    p.add_argument(
        "--executor",
        choices=["ray", "local"],
        default="ray",
        help="ray: Ray Train workers (attaches to the cluster or starts a local Ray); local: this process, no Ray",
    )
    add_storage_args(p)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from bigearth.training.config import load_config
    from bigearth.training.trainer import model_bands, train

    cfg = load_config(a.config, a.set)  # a ConfigError names the key and what was expected
    # A bad model config fails before anything attaches; this also imports the torch stack while the working
    # directory is there for certain (a `ray job submit --working-dir` driver on a cluster of several nodes of one
    # machine saw its extracted folder replaced after attaching, and torch._dynamo asks for os.getcwd() on import)
    model_bands(cfg)
    if a.executor == "ray":
        from bigearth.execution.raycluster import ensure_ray

        ensure_ray()
    result = train(cfg, a.data, a.storage, a.name, storage_from_args(a), executor=a.executor)
    print(json.dumps({"run": result.path, "metrics": result.metrics}, default=str))
    return 0
