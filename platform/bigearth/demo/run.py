"""The whole platform on embedded defaults (local Ray, local folders, the embedded vector engine), end to end:

synthesise an archive in the real v2 layout -> ingest -> train a small fused S1+S2 model -> evaluate -> index ->
evaluate retrieval -> serve -> classify and search through the SDK (and a REAL patch when ../shared is there) ->
an HTML report. `bigearth demo` (= `make demo`); `--serve` keeps the service running afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

STAGES = 8


def _stage(i: int, text: str) -> float:
    print(f"\n[{i}/{STAGES}] {text}", flush=True)
    return time.perf_counter()


def _free_port(preferred: int) -> int:
    """`preferred` if it is free, else (or when it is 0) any free port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_real_patches(shared: str | None = None) -> list[tuple[Path, Path]]:
    """(S2 folder, S1 folder) of the real v1 pairs in ../shared, if present."""
    root = Path(shared or os.environ.get("BIGEARTH_SHARED") or Path.cwd().parent / "shared") / "bigearthnet" / "real"
    s2, s1 = root / "v1" / "BigEarthNet-v1.0", root / "v1" / "BigEarthNet-S1-v1.0"
    if not (s2.is_dir() and s1.is_dir()):
        return []
    pairs = []
    for s1_dir in sorted(p for p in s1.iterdir() if p.is_dir()):
        meta = next(s1_dir.glob("*_labels_metadata.json"), None)
        partner = json.loads(meta.read_text()).get("corresponding_s2_patch") if meta else None
        if partner and (s2 / partner).is_dir():  # the S1 metadata names its S2 patch
            pairs.append((s2 / partner, s1_dir))
    return sorted(pairs)


def run_demo(
    workdir: str = "runs/demo",
    pairs: int = 2000,
    epochs: int = 6,
    seed: int = 0,
    serve: bool = False,
    port: int = 8000,
    shared: str | None = None,
    samples: int = 8,
    queries: int = 3,
) -> dict[str, Any]:
    """Run every stage in `workdir`; return the summary (also in `workdir/report/report.json`)."""
    from ray import serve as ray_serve

    from bigearth.client import Client
    from bigearth.demo.report import write_report
    from bigearth.evaluation.classification import evaluate
    from bigearth.execution.executors import RayExecutor
    from bigearth.execution.raycluster import ensure_ray
    from bigearth.ingest.job import ingest
    from bigearth.retrieval.evaluation import evaluate_retrieval
    from bigearth.retrieval.indexer import build_index
    from bigearth.serving.app import AppArgs, build
    from bigearth.synth.archive import synthesize
    from bigearth.training.config import load_config
    from bigearth.training.trainer import train

    work = Path(workdir).resolve()
    archive, shards, runs, ev = work / "archive", work / "shards", work / "runs", work / "eval"
    index, rev, report = work / "index", work / "retrieval", work / "report"
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    t = _stage(1, f"synthesising {pairs} pairs in the BigEarthNet v2 layout -> {archive}")
    if not (archive / "metadata.parquet").exists():
        synthesize(str(archive), layout="v2", pairs=pairs, seed=seed)
    else:
        print("      already there")
    times["synth"] = time.perf_counter() - t

    t = _stage(2, f"ingesting with Ray Data -> {shards}")
    ensure_ray()  # attached once: every stage below runs on this Ray
    ray_executor = RayExecutor()
    manifest = ingest(str(archive), str(shards), shard_size=max(50, pairs // 8), executor=ray_executor)
    times["ingest"] = time.perf_counter() - t

    t = _stage(3, f"training tiny-cpu (late fusion S1+S2) for {epochs} epochs with Ray Train -> {runs / 'tiny'}")
    config = Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu.yaml"
    overrides = [f"optim.epochs={epochs}", f"run.patience={epochs}"]
    if not config.exists():  # installed without the repository: tiny-cpu's essentials inline
        overrides += ["model.name=tiny", "model.fusion=late", "optim.lr=0.003", "data.batch_size=32"]
    cfg = load_config(config if config.exists() else None, overrides)
    train(cfg, str(shards), str(runs), "tiny")
    times["train"] = time.perf_counter() - t

    t = _stage(4, f"evaluating on the test split -> {ev}")
    metrics = evaluate(str(runs / "tiny"), str(shards), "test", str(ev), executor=ray_executor)
    print(f"      micro F1 {metrics['micro_f1']:.3f}, macro AP {metrics['macro_ap']:.3f}")
    times["evaluate"] = time.perf_counter() - t

    t = _stage(5, f"indexing every pair in the embedded vector engine -> {index}")
    built = build_index(str(runs / "tiny"), str(shards), str(index), recreate=True, executor=ray_executor)
    print(f"      {built['points_in_collection']} points, vectors {built['vectors']}")
    times["index"] = time.perf_counter() - t

    t = _stage(6, f"evaluating retrieval (test queries against train) -> {rev}")
    retrieval = evaluate_retrieval(str(index), str(shards), str(rev), k=10, queries=200, exact_queries=50)
    for mode, v in retrieval["modes"].items():
        print(f"      {mode:7s} mAP@10 {v['map@10']:.3f}  P@10 {v['precision@10']:.3f}  NDCG@10 {v['ndcg@10']:.3f}")
    times["retrieval_eval"] = time.perf_counter() - t

    port = _free_port(port)
    url = f"http://127.0.0.1:{port}"
    t = _stage(7, f"serving with Ray Serve at {url} and calling it through the SDK")
    ray_serve.start(http_options={"host": "127.0.0.1", "port": port})
    args = AppArgs(checkpoint=str(runs / "tiny"), index=str(index), data=str(shards), replica_cpus=0.5)
    ray_serve.run(build(args), name="bigearth", route_prefix="/")
    images = report / "images"
    images.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"samples": [], "queries": [], "real": []}
    with Client(url, timeout=120) as c:
        deadline = time.time() + 180
        while not _ready(c):
            if time.time() > deadline:
                raise RuntimeError(f"the service at {url} did not become ready in 180 s")
            time.sleep(1)
        import pyarrow.parquet as pq

        preds = pq.read_table(ev / "predictions.parquet").to_pylist()[:samples]
        for p in preds:
            r = c.classify(patch_id=p["patch_id"])
            png = images / f"{p['patch_id']}.png"
            png.write_bytes(c.rgb(p["patch_id"], scale=2))
            data["samples"].append({"patch_id": p["patch_id"], "true": p["labels"], "pred": r.labels, "png": str(png)})
        print(f"      classified {len(preds)} test pairs by patch id")
        for p in preds[:queries]:
            res = c.search(patch_id=p["patch_id"], k=5, filter={"split": "train"})
            hits = []
            for h in res.hits:
                png = images / f"{h.patch_id}.png"
                if not png.exists():
                    png.write_bytes(c.rgb(h.patch_id, scale=2))
                labels = h.payload["labels"]
                shared_labels = sorted(set(labels) & set(p["labels"]))
                hits.append(
                    {
                        "patch_id": h.patch_id,
                        "score": h.score,
                        "labels": labels,
                        "shared": shared_labels,
                        "png": str(png),
                    }
                )
            data["queries"].append(
                {
                    "patch_id": p["patch_id"],
                    "labels": p["labels"],
                    "png": str(images / f"{p['patch_id']}.png"),
                    "hits": hits,
                }
            )
        print(f"      searched the train split for the neighbours of {len(data['queries'])} test pairs")
        for s2, s1 in find_real_patches(shared):
            r = c.classify(s2, s1)
            top = sorted(r.probabilities.items(), key=lambda kv: -kv[1])[:3]
            data["real"].append({"name": s2.name, "labels": r.labels, "top": top})
        if data["real"]:
            print(f"      classified {len(data['real'])} REAL BigEarthNet pairs uploaded as GeoTIFFs")
        else:
            print("      (no ../shared/bigearthnet/real: skipped the real patches)")
    times["serve_and_sdk"] = time.perf_counter() - t

    t = _stage(8, f"writing the report -> {report / 'report.html'}")
    history = [json.loads(line) for line in (runs / "tiny" / "metrics.jsonl").read_text().splitlines()]
    summary = {
        "pairs ingested": manifest.pairs,
        "splits": manifest.splits,
        "epochs": len(history),
        "service": url,
        "seconds": {k: round(v, 1) for k, v in times.items()},
    }
    data.update(
        title="BigEarthNet platform demo",
        summary=summary,
        curves_png=str(runs / "tiny" / "curves.png"),
        per_class_png=str(ev / "per_class.png"),
        metrics={k: v for k, v in metrics.items() if k != "class_names"},
        retrieval=retrieval,
        history=history,
        explorer=f"{url}/" if serve else None,
    )
    page = write_report(str(report), data)
    times["report"] = time.perf_counter() - t
    total = time.perf_counter() - t_all
    print(f"\ndemo: done in {total:.0f} s. Report: {page}")
    if serve:
        print(
            f"The service keeps running: the explorer page at {url}/, the API at {url}/docs; Ctrl-C stops it.",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    else:
        keep = f"bigearth demo --workdir {workdir} --serve"
        print(f"To keep the service running (the explorer page at /, the API at /docs): {keep}")
    ray_serve.shutdown()
    return {"report": page, "summary": summary, "metrics": data["metrics"], "retrieval": retrieval}


def _ready(client: Any) -> bool:
    try:
        return bool(client.ready().ready)
    except Exception:  # not up yet: connection refused, 503
        return False
