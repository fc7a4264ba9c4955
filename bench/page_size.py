"""Benchmark: what pairs per Parquet data page cost a whole-shard read (training, indexing), for the page index
that lets the service read one pair's page instead of a row group (`bigearth.shards.format.PAGE_PAIRS`).

    taskset -c 1 .venv/bin/python bench/page_size.py [--pairs 1024] [--repeat 9] [--sizes 1,8,16]

Writes `--pairs` synthetic pairs (the 14 band columns of the shard schema, lz4, page checksums, row groups of 128)
once per layout: one page per column chunk (as before the page index) and each of `--sizes` pairs per page, then
reads each file whole with pyarrow alone (`read_row_group`, checksums verified, one thread), the layouts
alternating, and prints the best and median ms a pair of each. Pin it to one core for stable figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bigearth.core.bands import ALL_BANDS
from bigearth.shards.format import ROW_GROUP_PAIRS


def table(pairs: int) -> pa.Table:
    rng = np.random.default_rng(0)
    cols = {}
    for b in ALL_BANDS:
        size = int(np.prod(b.shape))
        if np.dtype(b.dtype).kind == "f":  # S1 backscatter in dB
            values = rng.normal(-12, 3, size=(pairs, size)).astype(b.dtype)
        else:  # S2 reflectance
            values = rng.normal(1000, 200, size=(pairs, size)).clip(0, 20000).astype(b.dtype)
        width = size * np.dtype(b.dtype).itemsize
        cols[b.name] = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), pairs, [None, pa.py_buffer(values)])
    return pa.table(cols)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--sizes", default="1,8,16", help="pairs per page to compare with one page per column chunk")
    a = ap.parse_args()
    layouts: list[int | None] = [None, *(int(s) for s in a.sizes.split(","))]
    t = table(a.pairs)
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for pp in layouts:
            files[pp] = Path(tmp) / f"pages-{pp or 'chunk'}.parquet"
            extra = {"max_rows_per_page": pp, "write_page_index": True} if pp else {}
            pq.write_table(
                t, files[pp], row_group_size=ROW_GROUP_PAIRS, compression="lz4", write_page_checksum=True,
                use_dictionary=False, write_statistics=False, **extra,
            )  # fmt: skip
        times: dict[int | None, list[float]] = {pp: [] for pp in layouts}
        for _ in range(a.repeat):
            for pp in layouts:
                t0 = time.perf_counter()
                f = pq.ParquetFile(files[pp], page_checksum_verification=True)
                for i in range(f.num_row_groups):
                    f.read_row_group(i, use_threads=False)
                times[pp].append((time.perf_counter() - t0) / a.pairs * 1e3)
    result = {
        str(pp or "column chunk"): {"best_ms": round(min(v), 4), "median_ms": round(sorted(v)[len(v) // 2], 4)}
        for pp, v in times.items()
    }
    print(json.dumps({"pairs": a.pairs, "repeat": a.repeat, "ms_per_pair": result}, indent=1))


if __name__ == "__main__":
    main()
