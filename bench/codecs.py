"""Benchmark: the shard codec by storage, the measurements behind `compression="auto"` (`compression_for`).

    .venv/bin/python bench/codecs.py [--pairs 8000] [--workdir .bench] [--rounds 5] [--out bench/results/codecs.json]

One synthetic v2 archive is ingested three times (none, lz4, zstd). For each codec, in rounds that alternate the
codecs (this VM's rates drift by +-30 % from one minute to the next, so every figure is a median over rounds):
  bytes per pair        of the shards written (synthetic pixels), and of the REAL patches (bench/shard_format.py's
                        measurement in bench/results/shard-format.json, format 2's layout)
  pyarrow alone         read + decompress + verify every row group of train, one thread per core
  training input        `RowGroupLoader` (what a training worker runs: readers, shuffle buffer of 2,048, gather into
                        batches of 256), steady pairs/s after each epoch's first batch, on every core
Then what a node reaches per codec when its shards come over a link of L Gb/s: min(cores x the input's per-core
rate, L / bytes per pair of real pixels), for 16 cores and links of 10, 25 and 100 Gb/s: the codec that wins each
case is the rule (local disk: `none`; over a network: `zstd` until the link outruns its decompression).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CODECS = ("none", "lz4", "zstd")
#: format 2's layout in bench/shard_format.py's results, and its codec names there
REAL_LAYOUT, REAL_NAMES = "fixed14", {"none": "none", "lz4": "lz4", "zstd": "zstd-3"}


def loader_rate(shards: str, threads: int, epochs: int = 2) -> float:
    """Steady pairs/s of the training input over `epochs` epochs of train (after each epoch's first batch)."""
    from bigearth.input.buffers import BatchBuffers
    from bigearth.input.loader import RowGroupLoader, epoch_share, row_groups

    plan = row_groups(shards, "train")
    buffers = BatchBuffers()
    pairs, seconds = 0, 0.0
    for epoch in range(epochs):
        share, _ = epoch_share(plan, epoch, shuffle=True, equal=False)
        first = None
        n = 0
        for batch in RowGroupLoader(share, 256, shuffle_buffer=2048, seed=epoch, threads=threads, buffers=buffers):
            n += len(batch["patch_id"])
            if first is None:
                first, n0 = time.perf_counter(), n
        assert first is not None
        pairs, seconds = pairs + n - n0, seconds + time.perf_counter() - first
    return pairs / seconds


def real_bytes() -> dict[str, int]:
    """Bytes per pair of the real patches per codec (bench/shard_format.py's last run)."""
    path = REPO / "bench" / "results" / "shard-format.json"
    rows = json.loads(path.read_text())["real"]
    out = {}
    for codec, name in REAL_NAMES.items():
        row = next(r for r in rows if r["layout"] == REAL_LAYOUT and r["compression"] == name)  # 56 real pairs
        out[codec] = int(row["bytes_per_pair"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=8000)
    p.add_argument("--workdir", default=str(REPO / ".bench"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out")
    a = p.parse_args()

    from bigearth.execution.executors import LocalExecutor
    from bigearth.ingest.job import ingest
    from bigearth.input.benchmark import bench_read_alone
    from bigearth.synth.archive import synthesize

    cores = len(os.sched_getaffinity(0))
    work = Path(a.workdir)
    archive = work / f"archive-{a.pairs}"
    if not (archive / "metadata.parquet").exists():
        synthesize(str(archive), layout="v2", pairs=a.pairs, seed=0, progress=False)
    shards: dict[str, str] = {}
    written: dict[str, int] = {}
    for codec in CODECS:
        out = work / f"shards-{a.pairs}-{codec}"
        if not (out / "manifest.json").exists():
            ingest(str(archive), str(out), compression=codec, overwrite=True, executor=LocalExecutor(progress=False))
        shards[codec] = str(out)
        written[codec] = sum(f.stat().st_size for f in out.rglob("part-*.parquet"))
    from bigearth.shards.shardset import ShardSet

    total_pairs = sum(ShardSet.open(shards["none"]).splits.values())
    alone: dict[str, list[float]] = {c: [] for c in CODECS}
    loader: dict[str, list[float]] = {c: [] for c in CODECS}
    for r in range(a.rounds):
        for codec in CODECS:
            alone[codec].append(bench_read_alone(shards[codec], "train", threads=cores)["pairs_per_s"])
            loader[codec].append(loader_rate(shards[codec], threads=cores))
        print(f"round {r + 1}/{a.rounds}", {c: round(loader[c][-1]) for c in CODECS}, flush=True)
    real = real_bytes()
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {cores} cores",
        "pairs": total_pairs,
        "rounds": a.rounds,
        "codecs": {},
    }
    for codec in CODECS:
        result["codecs"][codec] = {
            "bytes_per_pair_synthetic": round(written[codec] / total_pairs),
            "bytes_per_pair_real": real[codec],
            "alone_pairs_per_s": round(statistics.median(alone[codec]), 1),
            "alone_runs": [round(x) for x in alone[codec]],
            "input_pairs_per_s": round(statistics.median(loader[codec]), 1),
            "input_pairs_per_s_per_core": round(statistics.median(loader[codec]) / cores, 1),
            "input_runs": [round(x) for x in loader[codec]],
        }
    node_cores = 16
    result["projection"] = {}
    for gbps in (None, 10, 25, 100):
        rates = {}
        for codec in CODECS:
            cpu = node_cores * result["codecs"][codec]["input_pairs_per_s_per_core"]
            link = float("inf") if gbps is None else gbps * 1e9 / 8 / real[codec]
            rates[codec] = round(min(cpu, link))
        key = "local disk" if gbps is None else f"{gbps} Gb/s"
        result["projection"][key] = {"pairs_per_s": rates, "best": max(rates, key=lambda c: rates[c])}
    text = json.dumps(result, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    print(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "| codec | bytes / pair, real (synthetic) | pyarrow alone, all cores | training input, all cores | per core |",
        "|---|---|---|---|---|",
    ]
    for codec, c in r["codecs"].items():
        lines.append(
            f"| {codec} | {c['bytes_per_pair_real']:,} ({c['bytes_per_pair_synthetic']:,}) | "
            f"{c['alone_pairs_per_s']:,.0f} | {c['input_pairs_per_s']:,.0f} | {c['input_pairs_per_s_per_core']:,.0f} |"
        )
    lines += ["", "| 16-core node reading over | " + " | ".join(CODECS) + " | best |", "|---|---|---|---|---|"]
    for key, p in r["projection"].items():
        lines.append(f"| {key} | " + " | ".join(f"{p['pairs_per_s'][c]:,}" for c in CODECS) + f" | **{p['best']}** |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
