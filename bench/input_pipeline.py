"""Benchmark: the data path end to end, in one run on one synthetic archive.

    .venv/bin/python bench/input_pipeline.py [--pairs 4000] [--workdir .bench] [--epochs 4] [--no-s3]

Prints a JSON document (also written to --out) and a Markdown table (copied into docs/benchmarks.md). Every
figure is per CPU core, and the comparisons are ratios measured in the same run:
  (a) rasterio alone decoding the 14 GeoTIFFs of each pair (one process)          baseline of (b)
  (b) ingest from the local folder -> shards (Ray Data)                           target >= 4x (a) per core
  (c) ingest from s3:// (SeaweedFS on 127.0.0.1) -> shards, and the GETs/s it reaches
  (d) the torchgeo-style per-file loader (rasterio per band file, DataLoader)     baseline of (f)
  (e) pyarrow alone reading the shards (read + decompress + verify), on one thread and on one thread per core
      (the same cores as (f), nothing else to do)                                   baseline of (f)
  (f) the training input (the plan through Ray Data -> `RowGroupLoader` in the worker): steady state >= 3,000
      pairs/s/core, >= 80 % of (e) on the same cores (alternating rounds, medians: this VM drifts by +-30 %),
      >= 30x (d) per core; a later epoch's first batch within 0.25 s;
  peak memory of (f) on the full archive vs on a quarter of it (streaming: must not grow with the archive).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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
    from bigearth.archive.geotiff import GDAL_OPTIONS
    from bigearth.core.bands import S1_BANDS, S2_BANDS

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
    p.add_argument("--epochs", type=int, default=4, help="epochs of (f): the first is cold, the others measured")
    p.add_argument("--compression", default="auto", choices=["auto", "none", "lz4", "zstd"])
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds of (e) on every core and (f)")
    p.add_argument("--no-s3", action="store_true", help="skip (c)")
    p.add_argument(
        "--s3-pairs",
        type=int,
        default=3000,
        help="(c) ingests this many pairs of the archive (uploading 14 objects a pair to a local server is slow)",
    )
    p.add_argument("--out", help="write the JSON here too")
    a = p.parse_args()

    import ray

    from bigearth.archive.catalogue import build_catalogue
    from bigearth.core.bands import S1_BANDS, S2_BANDS
    from bigearth.ingest.job import ingest
    from bigearth.input.benchmark import bench_copy_alone, bench_input, bench_read_alone
    from bigearth.synth.archive import synthesize

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
        "compression": a.compression,
    }

    # (a) rasterio alone, on a sample, one process
    sample = rows[:: max(1, len(rows) // 400)]
    t = rasterio_alone(cat.layout, sample)
    result["a_rasterio_alone_pairs_per_s_per_core"] = round(len(sample) / t, 1)

    # (b) ingest from the local folder
    out = work / "shards-bench"
    start = time.perf_counter()
    with PeakMemory() as mem:
        m = ingest(str(archive), str(out), overwrite=True, compression=a.compression)
    t = time.perf_counter() - start
    result["compression"] = m.source["compression"]  # what `auto` chose for a local disk
    result["b_ingest_local_pairs"] = m.pairs
    result["b_ingest_local_seconds"] = round(t, 1)
    result["b_ingest_local_pairs_per_s_per_core"] = round(m.pairs / t / cpus, 1)
    result["b_ingest_peak_memory_mb"] = mem.delta_mb
    result["b_vs_a_per_core"] = round(
        result["b_ingest_local_pairs_per_s_per_core"] / result["a_rasterio_alone_pairs_per_s_per_core"], 2
    )

    # (c) ingest from S3 (SeaweedFS on the same two cores), the first --s3-pairs pairs of the archive
    if not a.no_s3:
        import pyarrow.fs as pafs

        from bigearth.core.storage import arrow_filesystem
        from seaweed import SeaweedS3

        subset = rows[: a.s3_pairs]
        with SeaweedS3() as s3:
            bucket = s3.make_bucket("bench")
            s3fs_native, _ = arrow_filesystem(f"s3://{bucket}/archive", s3.storage_options())
            names = [p.name for p in archive.glob("*.parquet")]
            names += [
                str(Path(path).relative_to(archive))
                for r in subset
                for path in (
                    *(cat.layout.s2_band(r["patch_id"], b.name) for b in S2_BANDS),
                    *(cat.layout.s1_band(r["s1_name"], b.name) for b in S1_BANDS),
                )
            ]
            with ThreadPoolExecutor(16) as pool:
                list(
                    pool.map(
                        lambda n: pafs.copy_files(
                            str(archive / n), f"{bucket}/archive/{n}", destination_filesystem=s3fs_native
                        ),
                        names,
                    )
                )
            start = time.perf_counter()
            m3 = ingest(
                f"s3://{bucket}/archive",
                str(work / "shards-from-s3"),
                storage=s3.storage_options(),
                overwrite=True,
                compression=a.compression,
                patches=[r["patch_id"] for r in subset],
            )
            t = time.perf_counter() - start
        result["c_ingest_s3_pairs"] = m3.pairs
        result["c_ingest_s3_pairs_per_s_per_core"] = round(m3.pairs / t / cpus, 1)
        result["c_ingest_s3_gets_per_s"] = round(m3.pairs * 14 / t, 1)
        result["c_vs_a_per_core"] = round(
            result["c_ingest_s3_pairs_per_s_per_core"] / result["a_rasterio_alone_pairs_per_s_per_core"], 2
        )

    # (d) the torchgeo-style loader, one process, on the train split
    train = [r for r in rows if r["split"] == "train"][:600]
    t = reference_loader(cat.layout, train)
    result["d_reference_pairs_per_s_per_core"] = round(len(train) / t, 1)

    # (e) pyarrow alone, one thread (and, for what bounds (f): without checksums; one copy of a pair's bytes)
    alone = bench_read_alone(str(out), "train")
    result["e_read_alone_pairs_per_s"] = alone["pairs_per_s"]
    result["e_read_alone_unverified_pairs_per_s"] = bench_read_alone(str(out), "train", verify=False)["pairs_per_s"]
    result["copy_alone_pairs_per_s"] = bench_copy_alone()["pairs_per_s"]

    # (f) the training input through Ray Data, on the full archive and on a quarter (memory must stay flat)
    quarter = work / "shards-bench-quarter"
    ingest(str(archive), str(quarter), limit=len(rows) // 4, overwrite=True, compression=a.compression)
    bench_input(str(quarter), "train", epochs=1)  # warm-up: torch imported, threads and workers started
    with PeakMemory() as mem_q:
        small = bench_input(str(quarter), "train", epochs=a.epochs)
    with PeakMemory() as mem_f:
        full = bench_input(str(out), "train", epochs=a.epochs)
    # (e) on the same cores against (f), in alternating rounds (medians)
    same_cores, paired = [], []
    for _ in range(a.rounds):
        same_cores.append(bench_read_alone(str(out), "train", threads=cpus)["pairs_per_s"])
        paired.append(bench_input(str(out), "train", epochs=2)["steady_pairs_per_s_per_cpu"] * cpus)
    # (f') Ray Data's row path on the same shards, for comparison (what training used before issue 9)
    rows_path = bench_input(str(out), "train", epochs=a.epochs, path="rows")
    ray.shutdown()
    steady = full["steady_pairs_per_s_per_cpu"]
    result["f_input"] = full
    result["f_input_quarter"] = small
    result["f_steady_pairs_per_s_per_core"] = steady
    result["f_first_batch_s"] = full["first_batch_s"]
    result["f_epoch_start_s"] = full["epoch_start_s"]
    result["f_vs_e_times_cores"] = round(steady * cpus / (alone["pairs_per_s"] * cpus), 3)
    result["e_same_cores_pairs_per_s"] = round(statistics.median(same_cores), 1)
    result["e_same_cores_runs"] = same_cores
    result["f_paired_pairs_per_s"] = round(statistics.median(paired), 1)
    result["f_paired_runs"] = [round(x, 1) for x in paired]
    result["f_paired_pairs_per_s_per_core"] = round(statistics.median(paired) / cpus, 1)
    result["f_vs_e_same_cores"] = round(statistics.median(f / e for f, e in zip(paired, same_cores, strict=True)), 3)
    result["f_vs_d_per_core"] = round(steady / result["d_reference_pairs_per_s_per_core"], 1)
    result["f_peak_memory_mb"] = {"quarter": mem_q.delta_mb, "full": mem_f.delta_mb}
    result["f_rows_path"] = rows_path
    result["f_vs_rows_path_steady"] = round(steady / max(rows_path["steady_pairs_per_s_per_cpu"], 1e-9), 2)
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    r = result
    print()
    print("| stage | pairs/s per core | ratio | target |")
    print("|---|---|---|---|")
    print(f"| (a) rasterio alone, 14 GeoTIFFs a pair | {r['a_rasterio_alone_pairs_per_s_per_core']} | 1 | |")
    print(
        f"| (b) ingest, local folder | {r['b_ingest_local_pairs_per_s_per_core']} | {r['b_vs_a_per_core']}x (a) "
        "| >= 4x (a) |"
    )
    if "c_vs_a_per_core" in r:
        print(
            f"| (c) ingest, s3:// | {r['c_ingest_s3_pairs_per_s_per_core']} | {r['c_vs_a_per_core']}x (a); "
            f"{r['c_ingest_s3_gets_per_s']} GETs/s | |"
        )
    print(f"| (d) torchgeo-style loader | {r['d_reference_pairs_per_s_per_core']} | 1 | |")
    print(f"| (e) pyarrow alone, one thread | {r['e_read_alone_pairs_per_s']} | 1 | |")
    print(f"| (e) pyarrow alone, one thread per core (all cores, median) | {r['e_same_cores_pairs_per_s']} | 1 | |")
    print(
        f"| (f) training input, steady state | {steady} | {r['f_vs_e_times_cores']} of (e) x cores; "
        f"{r['f_vs_d_per_core']}x (d) | >= 3,000; >= 0.8; >= 30x |"
    )
    print(
        f"| (f) training input, paired with (e) on the same cores (median of {a.rounds} rounds) | "
        f"{r['f_paired_pairs_per_s_per_core']} | {r['f_vs_e_same_cores']} of (e) on the same cores | >= 3,000; >= 0.8 |"
    )
    print(
        f"| (f) first batch: first epoch / slowest later epoch | {r['f_first_batch_s']} s / "
        f"{r['f_epoch_start_s']} s | | later <= 0.25 s |"
    )
    print(f"| (f) peak memory, quarter / full archive | {mem_q.delta_mb} MB / {mem_f.delta_mb} MB | | flat |")
    print(
        f"| (f') Ray Data row path, steady state / first batch of a later epoch | "
        f"{rows_path['steady_pairs_per_s_per_cpu']} / {rows_path['epoch_start_s']} s | "
        f"(f) is {r['f_vs_rows_path_steady']}x | |"
    )
    print()
    print(projection(result))
    print(
        f"| bounds: (e) without checksums; copying a pair's 275 KB once | "
        f"{r['e_read_alone_unverified_pairs_per_s']} / {r['copy_alone_pairs_per_s']} | | |"
    )


#: Published sizes (FACTS.md 1.1, 2.4): pairs of the whole archive and of its train split.
ARCHIVES = {"v1 (BigEarthNet-MM)": (590_326, 269_695), "v2 (reBEN)": (549_488, 237_871)}
#: ResNet-50 training throughput on one A100 (AMP, channels-last, 224 px): ~2,600 img/s (timm issue #1491,
#: `benchmark.py`). At 120 px the convolutions have (224/120)^2 = 3.5x fewer pixels: ~9,000 pairs/s is an upper
#: estimate (small images use a GPU less well; the 14-channel stem adds one convolution's worth).
GPU_PAIRS_PER_S = {"A100 (ResNet-50, 120 px, estimate)": 9_000, "H100/H200 (about 2x A100, estimate)": 18_000}


def projection(result: dict[str, Any]) -> str:
    """Markdown: ingest and epoch times of the real archive from the measured per-core rates."""
    ingest = result["b_ingest_local_pairs_per_s_per_core"]
    epoch = result["f_steady_pairs_per_s_per_core"]
    lines = [
        "| archive | pairs / train pairs | cores | ingest (local folder rate) | one epoch of train (input only) |",
        "|---|---|---|---|---|",
    ]
    for name, (pairs, train) in ARCHIVES.items():
        for cores in (16, 64, 256):
            lines.append(
                f"| {name} | {pairs:,} / {train:,} | {cores} | {pairs / (ingest * cores) / 60:.1f} min | "
                f"{train / (epoch * cores):.1f} s |"
            )
    lines += ["", "| GPU | pairs/s it can consume | cores of input per GPU at the measured rate |", "|---|---|---|"]
    for gpu, rate in GPU_PAIRS_PER_S.items():
        lines.append(f"| {gpu} | {rate:,} | {rate / epoch:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
