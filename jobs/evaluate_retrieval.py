"""Retrieval evaluation entrypoint: queries from the test split against the train split of an index.

    python jobs/evaluate_retrieval.py --index TARGET --data SHARDS_URI --out DIR [--k 10] [--queries 500]

Writes DIR/retrieval.json and DIR/retrieval.md (mAP@k, P@k, R@k, NDCG@k for fused, s1, s2, s1->s2 and s2->s1, and the
index's recall@k against exact search).
"""

import argparse
import json
import sys

from bigearth.cli.common import add_storage_args, storage_from_args
from bigearth.raycluster import arm


def main(argv: list[str] | None = None) -> int:
    arm()  # a lost cluster stops this job with a message (bigearth.raycluster)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="folder (embedded engine) or http(s):// Qdrant URL")
    p.add_argument("--data", required=True, help="the shard set the index was built from (labels, splits)")
    p.add_argument("--out", required=True)
    p.add_argument("--collection", default="bigearthnet")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--exact-queries", type=int, default=100, help="queries also run exactly, for index recall")
    p.add_argument("--query-split", default="test")
    p.add_argument("--archive-split", default="train")
    p.add_argument("--api-key", help="Qdrant API key (default: $QDRANT_API_KEY)")
    add_storage_args(p)
    a = p.parse_args(argv)
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
        api_key=a.api_key,
    )
    print(json.dumps(r["modes"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
