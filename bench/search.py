"""Benchmark: search at archive scale in the embedded engine (qdrant-edge), with and without label filters.

    .venv/bin/python bench/search.py [--points 590000] [--dim 512] [--queries 1000] [--index /tmp/bench-index]

Payloads are the REAL published v2 metadata (549,488 pairs: labels, split, country, snow/cloud flags; rows reused
with new ids up to --points), so filter selectivity is the archive's. Vectors are synthetic with the archive's
cluster structure: the sum of one direction per label of the pair (so pairs sharing labels are neighbours) plus a
per-country direction and noise. Queries: perturbed copies of random test pairs. Ground truth: exact cosine top-k in
numpy with the same filter. Reports build time, p50/p99 latency of `EdgeIndex.search` (the call the service
makes) and recall@10 against exact search, for several hnsw_ef values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
LISTS = REPO.parent / "shared" / "bigearthnet" / "lists" / "v2"


def corpus(points: int, dim: int, seed: int) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
    from bigearth.core import labels as lab
    from bigearth.retrieval.schema import flags, season

    t = pa.concat_tables(
        [
            pq.read_table(
                LISTS / name,
                columns=[
                    "patch_id",
                    "labels",
                    "split",
                    "country",
                    "contains_seasonal_snow",
                    "contains_cloud_or_shadow",
                    "s1_name",
                ],
            )
            for name in ("metadata.parquet", "metadata_for_patches_with_snow_cloud_or_shadow.parquet")
        ]
    )
    rows = t.to_pylist()
    rng = np.random.default_rng(seed)
    countries = sorted({r["country"] for r in rows})
    e_label = rng.normal(size=(19, dim)).astype(np.float32)
    e_country = rng.normal(size=(len(countries), dim)).astype(np.float32)
    ids, payloads = [], []
    multi_hot = np.zeros((points, 19), np.float32)
    country = np.zeros(points, np.int64)
    for i in range(points):
        r = rows[i % len(rows)]
        pid = r["patch_id"] if i < len(rows) else f"{r['patch_id']}_{i // len(rows)}"
        ids.append(pid)
        multi_hot[i] = lab.encode(r["labels"], 19)
        country[i] = countries.index(r["country"])
        day = 1 + i % 28
        month = 1 + (i // 28) % 12
        p = {
            "patch_id": pid,
            "s1_name": r["s1_name"],
            "labels": r["labels"],
            "split": r["split"],
            "country": r["country"],
            "tile": pid.split("_")[5] if pid.count("_") >= 5 else "",
            "date": f"2017-{month:02d}-{day:02d}T10:00:00Z",
            "season": season(month),
            "location": {"lat": 40 + (i % 300) * 0.1, "lon": -8 + (i % 500) * 0.05},
            "snow": bool(r["contains_seasonal_snow"]),
            "cloud": bool(r["contains_cloud_or_shadow"]),
        }
        p["flags"] = flags(p)
        payloads.append(p)
    n_labels = np.maximum(multi_hot.sum(1, keepdims=True), 1)
    x = (multi_hot @ e_label) / np.sqrt(n_labels) + 0.4 * e_country[country]
    x += rng.normal(scale=0.9, size=x.shape).astype(np.float32)
    return ids, x.astype(np.float32), payloads


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=590_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--ef", default="64,128,256")
    ap.add_argument("--index", default="/tmp/bigearth-bench-index")
    ap.add_argument("--reuse", action="store_true", help="keep an index already built at --index")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the JSON here")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO / "platform"))
    from tqdm import tqdm

    from bigearth.retrieval import EdgeIndex, IndexSettings, SearchFilter

    t0 = time.perf_counter()
    ids, x, payloads = corpus(a.points, a.dim, a.seed)
    print(f"corpus: {len(ids)} points x {a.dim} in {time.perf_counter() - t0:.0f} s", flush=True)
    result: dict[str, Any] = {"points": len(ids), "dim": a.dim, "machine": f"{platform.node()}, {os.cpu_count()} CPUs"}
    index = EdgeIndex(a.index, "bench", settings=IndexSettings())
    if not (a.reuse and index.exists() and index.count() == len(ids)):
        index.close()
        shutil.rmtree(a.index, ignore_errors=True)
        index = EdgeIndex(a.index, "bench", settings=IndexSettings())
        index.create({"fused": a.dim}, {"model": "bench"})
        t = time.perf_counter()
        for i in tqdm(range(0, len(ids), 2048), desc="upsert", mininterval=10):
            index.upsert(ids[i : i + 2048], {"fused": x[i : i + 2048]}, payloads[i : i + 2048])
        result["upsert_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        index.finish()
        result["optimize_s"] = round(time.perf_counter() - t, 1)
        result["build_s"] = result["upsert_s"] + result["optimize_s"]
        print(f"build: {result}", flush=True)
    size = sum(f.stat().st_size for f in Path(a.index).rglob("*") if f.is_file())
    result["index_disk_gb"] = round(size / 1e9, 2)

    rng = np.random.default_rng(a.seed + 1)
    test = [i for i, p in enumerate(payloads) if p["split"] == "test"]
    picks = rng.choice(test, size=a.queries, replace=False)
    queries = x[picks] + rng.normal(scale=0.3, size=(a.queries, a.dim)).astype(np.float32)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    label_sets = [set(p["labels"]) for p in payloads]
    cases: dict[str, list[SearchFilter | None]] = {
        "no filter": [None] * a.queries,
        "labels_any (one label of the query)": [
            SearchFilter(labels_any=[sorted(label_sets[j])[int(rng.integers(len(label_sets[j])))]]) for j in picks
        ],
        "labels_any + split=train + snow=false": [
            SearchFilter(labels_any=sorted(label_sets[j])[:1], split="train", snow=False) for j in picks
        ],
    }

    def mask(flt: SearchFilter | None) -> np.ndarray:
        if flt is None:
            return np.ones(len(ids), bool)
        keep = np.ones(len(ids), bool)
        if flt.labels_any:
            keep &= np.array([bool(s & set(flt.labels_any)) for s in label_sets])
        if flt.split:
            keep &= np.array([p["split"] in flt.split for p in payloads])
        if flt.snow is False:
            keep &= np.array([not p["snow"] for p in payloads])
        return keep

    result["cases"] = {}
    for name, filters in cases.items():
        truth, masks = [], {}
        for q, flt in zip(queries, filters, strict=True):
            key = json.dumps(flt.model_dump(mode="json") if flt else None, sort_keys=True)
            if key not in masks:
                masks[key] = mask(flt)
            scores = xn @ (q / np.linalg.norm(q))
            scores[~masks[key]] = -np.inf
            top = np.argpartition(-scores, a.k)[: a.k]
            truth.append({ids[j] for j in top})
        selectivity = float(
            np.mean(
                [masks[json.dumps(f.model_dump(mode="json") if f else None, sort_keys=True)].mean() for f in filters]
            )
        )
        per_ef = {}
        for ef in [int(v) for v in a.ef.split(",")]:
            index.settings = IndexSettings(hnsw_ef=ef)
            for q, flt in list(zip(queries, filters, strict=True))[:50]:  # warm-up
                index.search(q, "fused", a.k, flt)
            lat, recall = [], []
            for q, flt, gt in zip(queries, filters, truth, strict=True):
                t = time.perf_counter()
                hits = index.search(q, "fused", a.k, flt)
                lat.append(time.perf_counter() - t)
                recall.append(len(gt & {h.patch_id for h in hits}) / a.k)
            per_ef[ef] = {
                "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 3),
                "p99_ms": round(float(np.percentile(lat, 99)) * 1000, 3),
                "recall@10": round(float(np.mean(recall)), 4),
            }
            print(f"{name} ef={ef}: {per_ef[ef]}", flush=True)
        result["cases"][name] = {"mean_selectivity": round(selectivity, 4), "by_hnsw_ef": per_ef}
    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    index.close()
    print(json.dumps(result, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
