"""Retrieval quality of an index: queries from one split against the pairs of another (`jobs/evaluate_retrieval.py`).

For each query and its top k (relevant = shares at least one label; g = number of shared labels): precision@k,
recall@k (denominator: every relevant pair of the archive split), AP@k under two normalisations (sum of precision@i
at each relevant rank i, divided by min(k, relevant pairs in the archive) -> `map`, or by the relevant pairs
retrieved -> `map_retrieved`), NDCG@k (gain 2^g - 1; the ideal ranking from the archive's labels), ACG@k (mean g
over the k), WAP@k (ACG@i at each relevant rank i over the relevant retrieved), F1@k (per item 2 g / (|query labels|
+ |item labels|), mean over the k). When the query split is the archive split, the query is never one of its own
results nor counted as relevant. Modes: `fused`, `s1`, `s2` (query and archive vectors of the same kind), `s1->s2`
(cross-modal: the S1 vector of the query against the S2 vectors of the archive) and `s2->s1`. Plus recall@k of the
approximate index against exact search, on the same queries. The result names the kind of every vector (`features`,
`logits`, `aligned`: see `bigearth.models.align`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bigearth.core import labels as lab
from bigearth.core.records import write_bytes_atomic, write_json_atomic
from bigearth.core.secrets import redact
from bigearth.core.storage import StorageOptions, join, open_fs
from bigearth.retrieval.backends import DEFAULT_COLLECTION, open_index
from bigearth.retrieval.schema import SearchFilter

#: per-query metrics, averaged over the queries (`<name>@<k>` in retrieval.json; formulas in docs/retrieval.md)
METRICS = ("map", "map_retrieved", "precision", "recall", "ndcg", "acg", "wap", "f1")
MODES = {
    "fused": ("fused", "fused"),
    "s1": ("s1", "s1"),
    "s2": ("s2", "s2"),
    "s1->s2": ("s1", "s2"),
    "s2->s1": ("s2", "s1"),
}


def archive_relevance(
    query: np.ndarray, archive: np.ndarray, k: int, exclude: int | None = None
) -> tuple[int, np.ndarray]:
    """What the archive holds for one query, whatever was retrieved: the number of relevant pairs and the `k`
    largest shared-label counts (the ideal ranking's gains), in one pass over the archive: the counts are small
    integers (0 to the number of classes), so they are tallied, never sorted. `exclude`: the query's own row."""
    shared = np.rint(archive @ query).astype(np.int64)
    tally = np.bincount(shared, minlength=len(query) + 1)
    if exclude is not None:
        tally[shared[exclude]] -= 1
    ideal: list[int] = []
    for value in range(len(tally) - 1, -1, -1):  # from the most shared labels down, until k
        ideal += [value] * int(min(tally[value], k - len(ideal)))
    return int(tally[1:].sum()), np.asarray(ideal, np.float64)


def ranking_metrics(
    query: np.ndarray,
    retrieved: np.ndarray,
    archive: np.ndarray,
    k: int,
    exclude: int | None = None,
    relevance: tuple[int, np.ndarray] | None = None,
) -> dict[str, float]:
    """Metrics for one query (docs/retrieval.md has the formulas): `query` [C] and `retrieved` [n<=k, C] multi-hot,
    `archive` [N, C] multi-hot; `exclude`: the query's own row of `archive` (same split), not counted. `relevance`:
    `archive_relevance(query, archive, k, exclude)` when already computed (it is the same for every mode)."""
    total_relevant, ideal = relevance if relevance is not None else archive_relevance(query, archive, k, exclude)
    g = retrieved @ query if len(retrieved) else np.zeros(0)  # shared labels of each retrieved item
    rel = (g > 0).astype(np.float64)
    hits = rel.sum()
    ranks = np.arange(1, len(rel) + 1)
    precision_at_i = np.cumsum(rel) / ranks if len(rel) else rel
    acg_at_i = np.cumsum(g) / ranks if len(g) else g
    found = float((precision_at_i * rel).sum())
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = float(((2.0**g - 1) * discounts[: len(g)]).sum())
    idcg = float(((2.0**ideal - 1) * discounts[: len(ideal)]).sum())
    item_labels = retrieved.sum(1) if len(retrieved) else np.zeros(0)
    f1 = 2 * g / np.maximum(query.sum() + item_labels, 1)
    return {
        "precision": float(hits / k),
        "recall": float(hits / total_relevant) if total_relevant else 0.0,
        "map": found / min(k, total_relevant) if total_relevant else 0.0,
        "map_retrieved": found / hits if hits else 0.0,
        "ndcg": dcg / idcg if idcg else 0.0,
        "acg": float(g.sum() / k),
        "wap": float((acg_at_i * rel).sum() / hits) if hits else 0.0,
        "f1": float(f1.sum() / k),
    }


def search_others(
    index: Any, vector: Any, using: str, k: int, flt: SearchFilter, query_id: str | None, exact: bool = False
) -> list[Any]:
    """The top k of `index.search`; with `query_id` (the query is in the archive split) k + 1 are asked for and the
    query dropped, so it is never its own result."""
    hits = index.search(vector, using, k=k + (query_id is not None), flt=flt, exact=exact)
    return hits if query_id is None else [h for h in hits if h.patch_id != query_id][:k]


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
    from bigearth.input.raydata import read_columns

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
    same = int(query_split == archive_split)  # the query is in the archive: searched for k + 1, then dropped
    archive_row = {pid: i for i, pid in enumerate(ids[archive_sel])}
    relevance: dict[str, tuple[int, np.ndarray]] = {}  # per query: the same for every mode, one archive pass each
    result: dict[str, Any] = {
        "target": redact(target),
        "collection": collection,
        "k": k,
        "queries": len(query_ids),
        "query_split": query_split,
        "archive_split": archive_split,
        "archive_pairs": int(archive_sel.sum()),
        "query_excluded": bool(same),
        "vector_kinds": meta.get("vector_kinds", {}),
        "modes": {},
    }
    for mode, (q_name, a_name) in MODES.items():
        if q_name not in sizes or a_name not in sizes:
            continue
        sums = dict.fromkeys(METRICS, 0.0)
        overlap, n_exact, latencies = 0.0, 0, []
        for j, qid in enumerate(query_ids):
            vector = records[qid].vectors[q_name]
            t = time.perf_counter()
            hits = search_others(index, vector, a_name, k, only_archive, qid if same else None)
            latencies.append(time.perf_counter() - t)
            retrieved = multi_hot[[row_of[h.patch_id] for h in hits]] if hits else np.zeros((0, 19))
            own = archive_row.get(qid) if same else None
            query = multi_hot[row_of[qid]]
            if qid not in relevance:
                relevance[qid] = archive_relevance(query, archive, k, own)
            for key, v in ranking_metrics(query, retrieved, archive, k, own, relevance[qid]).items():
                sums[key] += v
            if j < exact_queries:
                found = search_others(index, vector, a_name, k, only_archive, qid if same else None, exact=True)
                exact = {h.patch_id for h in found}
                overlap += len(exact & {h.patch_id for h in hits}) / max(len(exact), 1)
                n_exact += 1
        n = len(query_ids)
        result["modes"][mode] = {
            **{f"{name}@{k}": sums[name] / n for name in METRICS},
            f"index_recall@{k}_vs_exact": overlap / n_exact if n_exact else None,
            "search_ms_p50": float(np.percentile(latencies, 50) * 1000),
            "search_ms_p99": float(np.percentile(latencies, 99) * 1000),
        }
    index.close()
    if out:
        fs, root = open_fs(out, storage)
        fs.makedirs(root, exist_ok=True)
        write_json_atomic(fs, join(root, "retrieval.json"), result, indent=1)  # whole or not at all
        write_bytes_atomic(fs, join(root, "retrieval.md"), retrieval_markdown(result).encode())
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
        f"| mode | mAP@{k} | mAP@{k} (by retrieved) | P@{k} | R@{k} | NDCG@{k} | ACG@{k} | WAP@{k} | F1@{k} "
        f"| index recall@{k} vs exact | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, m in r["modes"].items():
        pct = [f"{100 * m[f'{n}@{k}']:.2f}" for n in ("map", "map_retrieved", "precision", "recall", "ndcg")]
        rest = [f"{m[f'acg@{k}']:.3f}", f"{m[f'wap@{k}']:.3f}", f"{100 * m[f'f1@{k}']:.2f}"]
        lines.append(
            f"| {mode} | " + " | ".join(pct + rest) + f" | {_recall(m[f'index_recall@{k}_vs_exact'])} | "
            f"{m['search_ms_p50']:.2f} | {m['search_ms_p99']:.2f} |"
        )
    lines += [
        "",
        "In %, except ACG and WAP (in shared labels). mAP@k divides by min(k, relevant pairs in the archive); "
        "mAP@k by retrieved divides by the relevant pairs among the k. "
        + ("The query itself is never counted (it is in the archive split)." if r.get("query_excluded") else ""),
    ]
    return "\n".join(lines) + "\n"
