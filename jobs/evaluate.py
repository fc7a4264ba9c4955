"""Evaluation entrypoint: `python jobs/evaluate.py --checkpoint PATH --data SHARDS --split test --out DIR`.
PATH is a checkpoint folder or a run folder (its best checkpoint by validation macro AP)."""

import argparse
import json
import sys

from bigearth.cli.common import add_storage_args, storage_from_args
from bigearth.raycluster import arm


def main(argv: list[str] | None = None) -> int:
    arm()  # a lost cluster stops this job with a message (bigearth.raycluster)
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True)
    p.add_argument("--actors", type=int, default=1, help="inference actors (one model each)")
    add_storage_args(p)
    a = p.parse_args(argv)
    from bigearth.evaluation import evaluate

    m = evaluate(a.checkpoint, a.data, a.split, a.out, storage_from_args(a), actors=a.actors)
    keys = ("micro_precision", "micro_recall", "micro_f1", "micro_ap", "macro_f1", "macro_ap", "samples")
    print(json.dumps({"out": a.out, **{k: m[k] for k in keys}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
