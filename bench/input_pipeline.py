"""Benchmark: ingest from S3, the training input from shards, and a torchgeo-style reference loader, in one run.

    .venv/bin/python bench/input_pipeline.py [--pairs 4000] [--workdir .bench]

Prints a JSON document and a Markdown table (copied into docs/benchmarks.md). Every figure is per CPU core, and
the comparisons are ratios measured in the same run on the same synthetic archive:
  (a) ingest s3:// -> local shards (SeaweedFS on 127.0.0.1)  vs  decoding the same GeoTIFFs with rasterio alone;
  (b) training input from local shards (open_split -> iter_torch)  vs  (c) the torchgeo-style loader;
  peak memory of (b) on the full archive vs on a quarter of it (streaming: should not grow with the archive).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

import rasterio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the SeaweedFS launcher lives with the test fixtures
sys.path.insert(0, str(REPO / "bench"))

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def used_memory() -> int:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    kb = int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])
    return kb * 1024


class PeakMemory:
    """Peak of the machine's used memory above what it was when the block began (all Ray workers included)."""

    def __enter__(self) -> PeakMemory:
        self.base = self.peak = used_memory()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, used_memory())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()

    @property
    def delta_mb(self) -> float:
        return round((self.peak - self.base) / 2**20, 1)


def rasterio_alone(layout: Any, rows: list[dict[str, Any]]) -> float:
    """Seconds to read and decode every GeoTIFF of `rows` with rasterio, one process."""
    from bigearth.archive.reader import GDAL_OPTIONS
    from bigearth.bands import S1_BANDS, S2_BANDS

    start = time.perf_counter()
    with rasterio.Env(**GDAL_OPTIONS):
        for r in rows:
            for b in S2_BANDS:
                with rasterio.open(layout.s2_band(r["patch_id"], b.name)) as ds:
                    ds.read(1)
            for b in S1_BANDS:
                with rasterio.open(layout.s1_band(r["s1_name"], b.name)) as ds:
                    ds.read(1)
    return time.perf_counter() - start


def reference_loader(layout: Any, rows: list[dict[str, Any]]) -> float:
    import torch

    from reference_loader import TorchgeoStyleDataset

    loader = torch.utils.data.DataLoader(TorchgeoStyleDataset(layout, rows), batch_size=32, num_workers=0)
    start = time.perf_counter()
    n = sum(len(b["label"]) for b in loader)
    assert n == len(rows)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=4000)
    p.add_argument("--workdir", default=str(REPO / ".bench"))
    p.add_argument("--epochs", type=int, default=3)
    a = p.parse_args()

    import ray

    from bigearth.archive.catalogue import build_catalogue
    from bigearth.benchmark import bench_input
    from bigearth.ingest import ingest
    from bigearth.synth.archive import synthesize
    from seaweed import SeaweedS3

    work = Path(a.workdir)
    archive = work / f"archive-{a.pairs}"
    if not (archive / "metadata.parquet").exists():
        synthesize(str(archive), layout="v2", pairs=a.pairs, seed=0)
    cat = build_catalogue(str(archive))
    rows = cat.pairs.to_pylist()
    cpus = 2 if (os.cpu_count() or 2) >= 2 else 1
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    result: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "cpus_used": cpus,
        "catalogue_pairs": len(rows),
    }

    # baseline for (a): rasterio alone, on a sample, one process
    sample = rows[:: max(1, len(rows) // 400)]
    t = rasterio_alone(cat.layout, sample)
    result["rasterio_alone_pairs_per_s_per_core"] = round(len(sample) / t, 1)

    # (a) ingest from S3
    with SeaweedS3() as s3:
        bucket = s3.make_bucket("bench")
        import pyarrow.fs as pafs

        from bigearth.storage import arrow_filesystem

        s3fs_native, _ = arrow_filesystem(f"s3://{bucket}/archive", s3.storage_options())
        pafs.copy_files(str(archive), f"{bucket}/archive", destination_filesystem=s3fs_native, use_threads=True)
        out = work / "shards-from-s3"
        start = time.perf_counter()
        with PeakMemory() as mem:
            m = ingest(f"s3://{bucket}/archive", str(out), storage=s3.storage_options(), overwrite=True)
        t = time.perf_counter() - start
    result["ingest_s3_pairs"] = m.pairs
    result["ingest_s3_seconds"] = round(t, 1)
    result["ingest_s3_pairs_per_s_per_core"] = round(m.pairs / t / cpus, 1)
    result["ingest_peak_memory_mb"] = mem.delta_mb
    result["ingest_cost_vs_rasterio_alone"] = round(
        result["rasterio_alone_pairs_per_s_per_core"] / result["ingest_s3_pairs_per_s_per_core"], 2
    )

    # (b) training input from local shards, full and a quarter (memory must stay flat)
    quarter = work / "shards-quarter"
    ingest(str(archive), str(quarter), limit=len(rows) // 4, overwrite=True)
    with PeakMemory() as mem_q:
        small = bench_input(str(quarter), "train", epochs=a.epochs)
    with PeakMemory() as mem_f:
        full = bench_input(str(out), "train", epochs=a.epochs)
    result["input"] = full
    result["input_pairs_per_s_per_core"] = full["pairs_per_s_per_cpu"]
    result["input_steady_pairs_per_s_per_core"] = full["steady_pairs_per_s_per_cpu"]
    result["input_peak_memory_mb"] = {"quarter": mem_q.delta_mb, "full": mem_f.delta_mb}
    result["input_quarter"] = small

    # (c) the torchgeo-style loader, one process, on the train split
    train = [r for r in rows if r["split"] == "train"][:600]
    t = reference_loader(cat.layout, train)
    result["reference_pairs_per_s_per_core"] = round(len(train) / t, 1)
    ref = result["reference_pairs_per_s_per_core"]
    result["input_vs_reference_per_core"] = round(result["input_pairs_per_s_per_core"] / ref, 1)
    result["input_steady_vs_reference_per_core"] = round(result["input_steady_pairs_per_s_per_core"] / ref, 1)
    ray.shutdown()
    print(json.dumps(result, indent=1))
    print()
    print("| measure | pairs/s per core | ratio |")
    print("|---|---|---|")
    print(f"| rasterio alone (decode 14 GeoTIFFs) | {result['rasterio_alone_pairs_per_s_per_core']} | 1 |")
    print(
        f"| (a) ingest s3:// -> shards | {result['ingest_s3_pairs_per_s_per_core']} | "
        f"cost {result['ingest_cost_vs_rasterio_alone']}x rasterio alone |"
    )
    print(f"| (c) torchgeo-style loader | {result['reference_pairs_per_s_per_core']} | 1 |")
    print(
        f"| (b) training input from shards, whole epochs | {result['input_pairs_per_s_per_core']} | "
        f"{result['input_vs_reference_per_core']}x (c) |"
    )
    print(
        f"| (b) the same after each epoch's first batch | {result['input_steady_pairs_per_s_per_core']} | "
        f"{result['input_steady_vs_reference_per_core']}x (c) |"
    )
    print(f"| (b) peak memory, quarter / full archive | {mem_q.delta_mb} MB / {mem_f.delta_mb} MB | |")


if __name__ == "__main__":
    main()
