"""Retrieval quality of an index: queries from one split against the pairs of another (`jobs/evaluate_retrieval.py`).

For each query and its top k: precision@k and recall@k (relevant = shares at least one label; recall's denominator
is every relevant pair of the archive split), AP@k (sum of precision@i at each relevant rank i, divided by
min(k, relevant pairs in the archive)), NDCG@k (gain 2^g - 1 with g = number of shared labels; the ideal ranking is
computed from the archive's labels). Modes: `fused`, `s1`, `s2` (query and archive vectors of the same kind),
`s1->s2` (cross-modal: the S1 vector of the query against the S2 vectors of the archive) and `s2->s1`. Plus
recall@k of the approximate index against exact search, on the same queries. The result names the kind of every
vector (`features`, `logits`, `aligned`: see `bigearth.models.align`).
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from bigearth import labels as lab
from bigearth.retrieval.backends import DEFAULT_COLLECTION, open_index
from bigearth.retrieval.schema import SearchFilter
from bigearth.storage import StorageOptions, join, open_fs

MODES = {
    "fused": ("fused", "fused"),
    "s1": ("s1", "s1"),
    "s2": ("s2", "s2"),
    "s1->s2": ("s1", "s2"),
    "s2->s1": ("s2", "s1"),
}


def ranking_metrics(query: np.ndarray, retrieved: np.ndarray, archive: np.ndarray, k: int) -> dict[str, float]:
    """Metrics for one query: `query` [C] and `retrieved` [n<=k, C] multi-hot, `archive` [N, C] multi-hot."""
    overlap_all = archive @ query
    total_relevant = int((overlap_all > 0).sum())
    g = retrieved @ query if len(retrieved) else np.zeros(0)
    rel = (g > 0).astype(np.float64)
    hits = rel.sum()
    precision_at_i = np.cumsum(rel) / np.arange(1, len(rel) + 1) if len(rel) else rel
    ap = float((precision_at_i * rel).sum() / min(k, total_relevant)) if total_relevant else 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float(((2.0**g - 1) * discounts[: len(g)]).sum())
    ideal = np.sort(overlap_all)[::-1][:k]
    idcg = float(((2.0**ideal - 1) * discounts[: len(ideal)]).sum())
    return {
        "precision": float(hits / k),
        "recall": float(hits / total_relevant) if total_relevant else 0.0,
        "map": ap,
        "ndcg": dcg / idcg if idcg else 0.0,
    }


def evaluate_retrieval(
    target: str,
    data: str,
    out: str | None = None,
    collection: str = DEFAULT_COLLECTION,
    k: int = 10,
    queries: int = 500,
    query_split: str = "test",
    archive_split: str = "train",
    exact_queries: int = 100,
    seed: int = 0,
    storage: StorageOptions | None = None,
    api_key: str | None = None,
) -> dict[str, Any]:
    """Evaluate every mode the index has; write `retrieval.json` and `retrieval.md` to `out` when given."""
    from bigearth.data import read_columns

    index = open_index(target, collection, api_key=api_key)
    meta = index.metadata()
    sizes = meta["vectors"]
    table = read_columns(data, ["patch_id", "labels", "split"], [query_split, archive_split], storage)
    split = np.asarray(table.column("split").to_pylist())
    ids = np.asarray(table.column("patch_id").to_pylist(), dtype=object)
    multi_hot = lab.encode_many(table.column("labels").to_pylist(), 19).astype(np.float64)
    archive_sel = split == archive_split
    archive = multi_hot[archive_sel]
    row_of = {pid: i for i, pid in enumerate(ids)}
    query_ids = ids[split == query_split]
    if not len(query_ids) or not archive_sel.any():
        raise ValueError(f"{data}: need pairs in both {query_split!r} and {archive_split!r}")
    rng = np.random.default_rng(seed)
    query_ids = rng.choice(query_ids, size=min(queries, len(query_ids)), replace=False)
    records = {}
    for i in range(0, len(query_ids), 256):
        records.update(index.retrieve(list(query_ids[i : i + 256]), with_vectors=True))
    missing = [q for q in query_ids if q not in records]
    if missing:
        raise ValueError(f"{len(missing)} query pair(s) of {query_split!r} are not in the index, e.g. {missing[0]}")
    only_archive = SearchFilter(split=[archive_split])
    result: dict[str, Any] = {
        "target": target,
        "collection": collection,
        "k": k,
        "queries": len(query_ids),
        "query_split": query_split,
        "archive_split": archive_split,
        "archive_pairs": int(archive_sel.sum()),
        "vector_kinds": meta.get("vector_kinds", {}),
        "modes": {},
    }
    for mode, (q_name, a_name) in MODES.items():
        if q_name not in sizes or a_name not in sizes:
            continue
        sums = {"precision": 0.0, "recall": 0.0, "map": 0.0, "ndcg": 0.0}
        overlap, n_exact, latencies = 0.0, 0, []
        for j, qid in enumerate(query_ids):
            vector = records[qid].vectors[q_name]
            t = time.perf_counter()
            hits = index.search(vector, a_name, k=k, flt=only_archive)
            latencies.append(time.perf_counter() - t)
            retrieved = multi_hot[[row_of[h.patch_id] for h in hits]] if hits else np.zeros((0, 19))
            for key, v in ranking_metrics(multi_hot[row_of[qid]], retrieved, archive, k).items():
                sums[key] += v
            if j < exact_queries:
                exact = {h.patch_id for h in index.search(vector, a_name, k=k, flt=only_archive, exact=True)}
                overlap += len(exact & {h.patch_id for h in hits}) / max(len(exact), 1)
                n_exact += 1
        n = len(query_ids)
        result["modes"][mode] = {
            f"map@{k}": sums["map"] / n,
            f"precision@{k}": sums["precision"] / n,
            f"recall@{k}": sums["recall"] / n,
            f"ndcg@{k}": sums["ndcg"] / n,
            f"index_recall@{k}_vs_exact": overlap / n_exact if n_exact else None,
            "search_ms_p50": float(np.percentile(latencies, 50) * 1000),
            "search_ms_p99": float(np.percentile(latencies, 99) * 1000),
        }
    index.close()
    if out:
        fs, root = open_fs(out, storage)
        fs.makedirs(root, exist_ok=True)
        with fs.open(join(root, "retrieval.json"), "w") as f:
            json.dump(result, f, indent=1)
        with fs.open(join(root, "retrieval.md"), "w") as f:
            f.write(retrieval_markdown(result))
    return result


def _recall(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def retrieval_markdown(r: dict[str, Any]) -> str:
    k = r["k"]
    lines = [
        f"# Retrieval: {r['queries']} `{r['query_split']}` queries against {r['archive_pairs']} "
        f"`{r['archive_split']}` pairs (k = {k})",
        "",
        "Vectors: " + (", ".join(f"`{n}` {kind}" for n, kind in r.get("vector_kinds", {}).items()) or "n/a"),
        "",
        f"| mode | mAP@{k} | P@{k} | R@{k} | NDCG@{k} | index recall@{k} vs exact | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, m in r["modes"].items():
        lines.append(
            f"| {mode} | {100 * m[f'map@{k}']:.2f} | {100 * m[f'precision@{k}']:.2f} | {100 * m[f'recall@{k}']:.2f} | "
            f"{100 * m[f'ndcg@{k}']:.2f} | {_recall(m[f'index_recall@{k}_vs_exact'])} | {m['search_ms_p50']:.2f} | "
            f"{m['search_ms_p99']:.2f} |"
        )
    return "\n".join(lines) + "\n"
