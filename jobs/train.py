"""Training entrypoint: `ray job submit --working-dir . -- python jobs/train.py --config configs/X.yaml
--data SHARDS --storage URI [--name RUN] [--set key=value ...]`. Starts a local Ray when there is no cluster.
Re-running with the same --name and --storage resumes from the latest checkpoint."""

import argparse
import json
import sys

from bigearth.cli.common import add_storage_args, storage_from_args
from bigearth.raycluster import arm
from bigearth.training.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    arm()  # a lost cluster stops this job with a message (bigearth.raycluster)
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", help="YAML file under configs/ (defaults for every key otherwise)")
    p.add_argument("--data", required=True, help="shard set written by `bigearth ingest` (path or URL)")
    p.add_argument("--storage", required=True, help="where runs live: local folder or s3://bucket/prefix")
    p.add_argument("--name", help="run name (default: model and time); the same name resumes")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.lr=3e-4")
    add_storage_args(p)
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config, a.set)
    except (ConfigError, OSError) as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2
    from bigearth.training.trainer import train

    result = train(cfg, a.data, a.storage, a.name, storage_from_args(a))
    print(json.dumps({"run": result.path, "metrics": result.metrics}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
