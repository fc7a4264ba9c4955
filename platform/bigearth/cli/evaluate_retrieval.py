"""`bigearth evaluate-retrieval` (and jobs/evaluate_retrieval.py): queries from one split against another.

    bigearth evaluate-retrieval --index TARGET --data SHARDS_URI --out DIR [--k 10] [--queries 500]

Writes DIR/retrieval.json and DIR/retrieval.md (mAP@k, P@k, R@k, NDCG@k for fused, s1, s2, s1->s2 and s2->s1, and the
index's recall@k against exact search).
"""

from __future__ import annotations

import argparse
import json

from bigearth.cli.common import add_secret_argument, add_storage_args, secret_from_args, storage_from_args


def add(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("evaluate-retrieval", help="retrieval quality of an index: mAP/P/R/NDCG@k, recall vs exact")
    p.add_argument("--index", required=True, help="folder (embedded engine) or http(s):// Qdrant URL")
    p.add_argument("--data", required=True, help="the shard set the index was built from (labels, splits)")
    p.add_argument("--out", required=True)
    p.add_argument("--collection", default="bigearthnet")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--exact-queries", type=int, default=100, help="queries also run exactly, for index recall")
    p.add_argument("--query-split", default="test")
    p.add_argument("--archive-split", default="train")
    add_secret_argument(p, "--api-key", "QDRANT_API_KEY", "Qdrant API key")
    add_storage_args(p)
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from bigearth.retrieval.evaluation import evaluate_retrieval

    r = evaluate_retrieval(
        a.index,
        a.data,
        a.out,
        collection=a.collection,
        k=a.k,
        queries=a.queries,
        query_split=a.query_split,
        archive_split=a.archive_split,
        exact_queries=a.exact_queries,
        storage=storage_from_args(a),
        api_key=secret_from_args(a, "--api-key", None),  # else $QDRANT_API_KEY, read by the Qdrant engine
    )
    print(json.dumps(r["modes"]))
    return 0
