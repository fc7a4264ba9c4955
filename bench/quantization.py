"""Benchmark: the stored vectors' quantization at archive scale in the embedded engine: float, int8, binary.

    .venv/bin/python bench/quantization.py [--points 590000] [--dim 512] [--queries 500] \
        [--workdir /tmp/bigearth-bench-quant] [--out bench/results/quantization-590k.json]

The corpus is `bench/search.py`'s (the REAL published v2 metadata as payloads, vectors with the archive's label
structure). For each setting an index is built in its own process (`IndexSettings(quantization=...)`, the
`--quantization` option of `jobs/index.py`), then a fresh process opens it and runs the same queries, so the
memory figure is that of a reader (the service's Retriever): resident memory after opening the index and running
every query, minus the process before it opened the index. Latency: the whole `EdgeIndex.search` call at hnsw_ef
128, no filter and a one-label filter. Recall@10 against exact cosine search in numpy (the same filter). Quantized
searches rescore their candidates with the full vectors (`oversampling` candidates per result).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {  # name -> (quantization, oversampling)
    "float": ("none", 1.0),
    "int8": ("int8", 2.0),
    "binary": ("binary", 2.0),
    "binary x4": ("binary", 4.0),
}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def build(work: Path, quant: str) -> dict[str, Any]:
    from bigearth.retrieval import EdgeIndex, IndexSettings

    with open(work / "corpus.pkl", "rb") as f:
        ids, payloads = pickle.load(f)
    x = np.load(work / "x.npy")
    folder = work / f"index-{quant}"
    shutil.rmtree(folder, ignore_errors=True)
    index = EdgeIndex(str(folder), "bench", settings=IndexSettings(quantization=quant))
    index.create({"fused": x.shape[1]}, {"model": "bench"})
    t = time.perf_counter()
    for i in range(0, len(ids), 2048):
        index.upsert(ids[i : i + 2048], {"fused": x[i : i + 2048]}, payloads[i : i + 2048])
    upsert = time.perf_counter() - t
    t = time.perf_counter()
    index.finish()
    optimize = time.perf_counter() - t
    index.close()
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return {"upsert_s": round(upsert, 1), "optimize_s": round(optimize, 1), "disk_mb": round(size / 1e6, 1)}


def query(work: Path, quant: str, oversampling: float, k: int) -> dict[str, Any]:
    from bigearth.retrieval import EdgeIndex, IndexSettings, SearchFilter

    with open(work / "queries.pkl", "rb") as f:
        queries, cases = pickle.load(f)
    before = _rss_mb()
    settings = IndexSettings(quantization=quant, oversampling=oversampling, hnsw_ef=128)
    index = EdgeIndex(str(work / f"index-{quant}"), "bench", settings=settings)
    out: dict[str, Any] = {}
    for name, (labels, truth) in cases.items():
        filters = [None if lab is None else SearchFilter(labels_any=[lab]) for lab in labels]
        for q, flt in list(zip(queries, filters, strict=True))[:50]:  # warm-up
            index.search(q, "fused", k, flt)
        lat, recall = [], []
        for q, flt, gt in zip(queries, filters, truth, strict=True):
            t = time.perf_counter()
            hits = index.search(q, "fused", k, flt)
            lat.append(time.perf_counter() - t)
            recall.append(len(set(gt) & {h.patch_id for h in hits}) / k)
        out[name] = {
            "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 3),
            "p99_ms": round(float(np.percentile(lat, 99)) * 1000, 3),
            "recall@10": round(float(np.mean(recall)), 4),
        }
    out["reader_memory_mb"] = round(_rss_mb() - before, 1)
    index.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=590_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default="/tmp/bigearth-bench-quant")
    ap.add_argument("--out")
    ap.add_argument("--reuse", action="store_true", help="keep the corpus and indexes already built in --workdir")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    sys.path.insert(0, str(REPO / "platform"))
    work = Path(a.workdir)
    if a.child:
        role, quant = a.child[0], a.child[1]
        res = build(work, quant) if role == "build" else query(work, quant, float(a.child[2]), a.k)
        print("RESULT " + json.dumps(res), flush=True)
        return 0

    sys.path.insert(0, str(REPO / "bench"))
    from search import corpus  # bench/search.py

    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    previous = json.loads(Path(a.out).read_text()) if a.reuse and a.out and Path(a.out).exists() else None
    ids, x, payloads = corpus(a.points, a.dim, a.seed)
    np.save(work / "x.npy", x)
    with open(work / "corpus.pkl", "wb") as f:
        pickle.dump((ids, payloads), f)
    rng = np.random.default_rng(a.seed + 1)
    test = [i for i, p in enumerate(payloads) if p["split"] == "test"]
    picks = rng.choice(test, size=a.queries, replace=False)
    queries = x[picks] + rng.normal(scale=0.3, size=(a.queries, a.dim)).astype(np.float32)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    label_sets = [set(p["labels"]) for p in payloads]
    one_label = [sorted(label_sets[j])[int(rng.integers(len(label_sets[j])))] for j in picks]
    cases: dict[str, tuple[list[str | None], list[list[str]]]] = {}
    for name, labels in (("no filter", [None] * a.queries), ("labels_any (one label)", one_label)):
        truth = []
        for q, lab in zip(queries, labels, strict=True):
            scores = xn @ (q / np.linalg.norm(q))
            if lab is not None:
                scores[np.array([lab not in s for s in label_sets])] = -np.inf
            truth.append([ids[j] for j in np.argpartition(-scores, a.k)[: a.k]])
        cases[name] = (list(labels), truth)
    with open(work / "queries.pkl", "wb") as f:
        pickle.dump((queries, cases), f)
    del xn
    print(f"corpus and exact answers: {len(ids)} x {a.dim} in {time.perf_counter() - t0:.0f} s", flush=True)

    def child(*args: str) -> dict[str, Any]:
        cmd = [sys.executable, __file__, "--workdir", str(work), "--k", str(a.k), "--child", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
        return json.loads(line[7:])  # type: ignore[no-any-return]

    result: dict[str, Any] = {
        "points": len(ids),
        "dim": a.dim,
        "queries": a.queries,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "float_vectors_mb": round(x.nbytes / 1e6, 1),
        "settings": {},
    }
    built: dict[str, dict[str, Any]] = {}
    for name, (quant, over) in SETTINGS.items():
        if quant not in built and previous and (work / f"index-{quant}").exists():
            built[quant] = {k: previous["settings"][name][k] for k in ("upsert_s", "optimize_s", "disk_mb")}
        if quant not in built:
            built[quant] = child("build", quant)
            print(f"build {quant}: {built[quant]}", flush=True)
        result["settings"][name] = {"quantization": quant, "oversampling": over, **built[quant]}
        result["settings"][name].update(child("query", quant, str(over)))
        print(f"{name}: {result['settings'][name]}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1))
    print("| setting | reader MB | disk MB | build s | p50 ms | p99 ms | recall@10 | filtered p50 | p99 | recall@10 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in result["settings"].items():
        nf, fl = r["no filter"], r["labels_any (one label)"]
        print(
            f"| {name} | {r['reader_memory_mb']} | {r['disk_mb']} | {r['upsert_s'] + r['optimize_s']:.0f} | "
            f"{nf['p50_ms']} | {nf['p99_ms']} | {nf['recall@10']} | {fl['p50_ms']} | {fl['p99_ms']} | "
            f"{fl['recall@10']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
