"""Benchmark: one download's staging pass (md5 + decompress + tar parse + spills, `stage_download`) and the
reader alone (decompress + tar parse, `TarStream` over the file in memory) with two versions of the code, on the
same synthetic download, alternating, in one run.

    git archive <old commit> platform | tar -x -C /tmp/old
    .venv/bin/python bench/staging_reader.py --pairs 1000 --code /tmp/old/platform --code platform

Each run is a fresh process with `--code` first on the path; the figure is the best of `--repeat` runs per code,
in MB/s of the compressed download, with the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ONE = """
import dataclasses, json, sys, time
import pyarrow as pa, pyarrow.parquet as pq
from bigearth.archive.layouts import layout_for
from bigearth.archive.staging import stage_download
from bigearth.core.storage import StorageOptions
packed, stage = sys.argv[1], sys.argv[2]
ids = pq.read_table(packed + "/metadata.parquet", columns=["patch_id"])["patch_id"]
route = pa.table({"name": ids, "shard": pa.array([i % 8 for i in range(len(ids))], pa.int32())})
d = layout_for("v2-downloads", packed).downloads[0]
t0 = time.perf_counter()
rec = stage_download(dataclasses.asdict(d), packed, stage, StorageOptions(), route, ids, progress=False)
seconds = time.perf_counter() - t0
peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) << 10
from bigearth.archive.tarstream import TarStream
data = open(packed + "/" + d.name, "rb").read()
chunks = [data[i : i + (8 << 20)] for i in range(0, len(data), 8 << 20)]
t0 = time.perf_counter()
n = sum(len(m.data) for m in TarStream(chunks, "zstd"))
reader = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "reader": reader, "bytes": rec["bytes"], "staged": rec["counts"]["staged"],
                  "peak": peak}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--workdir", default=".bench")
    ap.add_argument("--code", action="append", required=True, help="a platform/ folder to time (repeatable)")
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    packed = Path(a.workdir) / f"downloads-{a.pairs}-packed"
    if not (packed / "BigEarthNet-S2.tar.zst").exists():
        from bigearth.synth.archive import synthesize

        synthesize(str(packed), layout="v2", pairs=a.pairs, seed=0, packed=True, progress=False)
    best: dict[str, dict[str, float]] = {}
    for _ in range(a.repeat):
        for code in a.code:
            with tempfile.TemporaryDirectory() as stage:
                env = {**os.environ, "PYTHONPATH": str(Path(code).resolve())}
                out = subprocess.run(
                    [sys.executable, "-c", ONE, str(packed), stage], env=env, capture_output=True, text=True, check=True
                )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            b = best.setdefault(code, r)
            b["seconds"], b["reader"] = min(b["seconds"], r["seconds"]), min(b["reader"], r["reader"])
    for code, r in best.items():
        mb = r["bytes"] / 1e6
        print(
            f"{code}: {mb:.1f} MB compressed, {r['staged']:,} members; staging {r['seconds']:.2f} s = "
            f"{mb / r['seconds']:.1f} MB/s (peak RSS {r['peak'] / 1e6:.0f} MB); reader alone {r['reader']:.2f} s = "
            f"{mb / r['reader']:.1f} MB/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
