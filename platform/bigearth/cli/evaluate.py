"""`bigearth evaluate` (and jobs/evaluate.py): a checkpoint's metrics on a split (a Ray Data actor pool).

    bigearth evaluate --checkpoint PATH --data SHARDS --split test --out DIR
    bigearth evaluate ... --countries Portugal                 # the pairs of some countries only (or seasons)

PATH is a checkpoint folder or a run folder (its best checkpoint by its validation score). metrics.json has the
figures of the whole (selected) split and, per country and season, `by_country` and `by_season`. A segmentation
checkpoint writes its own figures (mIoU, per-class IoU, ...: bigearth.evaluation.segmentation).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from bigearth.cli.common import add_executor_argument, add_storage_args, executor_from_args, storage_from_args

if TYPE_CHECKING:
    from bigearth.shards.subsets import MetadataSubset

SUMMARY = ("micro_precision", "micro_recall", "micro_f1", "micro_ap", "macro_f1", "macro_ap", "samples")
#: The summary of a segmentation checkpoint's evaluation (bigearth.evaluation.segmentation).
SEGMENTATION_SUMMARY = ("miou", "pixel_accuracy", "fw_iou", "scored_pixels", "patches", "unscored_patches")


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("evaluate", help="metrics of a checkpoint on a split: metrics.json/.md, per-class chart")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, or a run folder (its best checkpoint)")
    p.add_argument("--data", required=True, help="shard set (folder or URL)")
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True, help="folder for metrics.json, metrics.md, per_class.png, predictions")
    p.add_argument("--actors", type=int, default=1, help="inference actors (one model each)")
    add_subset_args(p)
    add_executor_argument(p)
    add_storage_args(p)
    p.set_defaults(func=run)


def add_subset_args(p: argparse.ArgumentParser) -> None:
    """--countries / --exclude-countries, --seasons / --exclude-seasons (`bigearth.shards.subsets`)."""
    from bigearth.core.seasons import SEASONS

    g = p.add_argument_group("subset", "evaluate some pairs of the split only (the shards' country and season)")
    countries = g.add_mutually_exclusive_group()
    countries.add_argument("--countries", nargs="+", metavar="COUNTRY", help="only pairs of these countries")
    countries.add_argument("--exclude-countries", nargs="+", metavar="COUNTRY", help="all but these countries")
    seasons = g.add_mutually_exclusive_group()
    seasons.add_argument("--seasons", nargs="+", choices=SEASONS, help="only pairs acquired in these seasons")
    seasons.add_argument("--exclude-seasons", nargs="+", choices=SEASONS, help="all but these seasons")


def subset_from_args(a: argparse.Namespace) -> MetadataSubset:
    from bigearth.shards.subsets import MetadataSubset

    return MetadataSubset.of(a.countries, a.exclude_countries, a.seasons, a.exclude_seasons)


def run(a: argparse.Namespace) -> int:
    from bigearth.evaluation.classification import evaluate

    m = evaluate(
        a.checkpoint,
        a.data,
        a.split,
        a.out,
        storage_from_args(a),
        actors=a.actors,
        executor=executor_from_args(a),
        subset=subset_from_args(a),
    )
    keys = SEGMENTATION_SUMMARY if m.get("task") == "segmentation" else SUMMARY
    print(json.dumps({"out": a.out, **{k: m[k] for k in keys}}))
    return 0
