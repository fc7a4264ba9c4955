"""The main job on embedded defaults: a synthetic archive in the real v2 layout -> ingest -> training batches.

Local Ray, local folders, nothing to install. Later stages (training, retrieval, serving) extend this path.
"""

from __future__ import annotations

import json
import os
import time

from bigearth.storage import join


def run_demo(workdir: str = "runs/demo", pairs: int = 2000, epochs: int = 2, seed: int = 0) -> dict[str, object]:
    """Run the demo in `workdir` and return (and print) what it did."""
    from bigearth.benchmark import bench_input
    from bigearth.ingest import ingest
    from bigearth.raycluster import ensure_ray
    from bigearth.synth.archive import synthesize

    workdir = os.path.abspath(workdir)
    archive, shards = join(workdir, "archive"), join(workdir, "shards")
    t0 = time.perf_counter()
    print(f"[1/3] synthesising {pairs} pairs in the BigEarthNet v2 layout -> {archive}")
    if not os.path.exists(join(archive, "metadata.parquet")):
        synthesize(archive, layout="v2", pairs=pairs, seed=seed)
    else:
        print("      (already there)")
    t1 = time.perf_counter()
    print(f"[2/3] ingesting with Ray Data -> {shards}")
    ensure_ray()
    manifest = ingest(archive, shards, shard_size=max(50, pairs // 8))
    t2 = time.perf_counter()
    print(f"[3/3] streaming {epochs} epoch(s) of training batches through the InputStem")
    result = bench_input(shards, "train", batch_size=128, epochs=epochs, stem=True)
    t3 = time.perf_counter()
    summary = {
        "archive": archive,
        "shards": shards,
        "pairs_ingested": manifest.pairs,
        "splits": manifest.splits,
        "excluded": manifest.excluded,
        "quarantined": len(manifest.quarantined),
        "input_pipeline": result,
        "seconds": {"synth": round(t1 - t0, 1), "ingest": round(t2 - t1, 1), "stream": round(t3 - t2, 1)},
    }
    with open(join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))
    print(f"demo: done; summary in {join(workdir, 'summary.json')}")
    return summary
