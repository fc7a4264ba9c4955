"""Shard format candidates, measured: bytes per pair and single-thread read rate (read + decompress, no Ray).

    .venv/bin/python bench/shard_format.py [--synthetic .bench/shards-4000] [--out bench/results/shard-format.json]

Sources of pixels:
  real       the REAL patches of ../shared (6 v1 + 2 v2 pairs), each band also in its dihedral variants (rotations,
             transposes, left-right flip; never a flip that keeps rows whole, so no pair repeats another byte for
             byte): 56 distinct pairs with the real entropy, one row group of them, repeated to ~1,000 rows (a
             page never holds the same value twice, so sizes are those of the real entropy);
  synthetic  the rows of a shard set written by `bigearth ingest` (any version) when `--synthetic` names one.
Candidates: band layout (14 variable-length binary columns = format 1; 14 fixed-size binary columns; one fixed-size
column per resolution group; Arrow's fixed_shape_tensor per group) x compression (none, lz4, zstd 1, zstd 3)
x row-group size; page size for the chosen layout. Every file is read once before timing (page cache warm).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from bigearth.core.bands import ALL_BANDS, BANDS, GROUPS  # noqa: E402

VARIANTS = (
    lambda a: a,
    np.fliplr,
    lambda a: np.rot90(a, 1),
    lambda a: np.rot90(a, 2),
    lambda a: np.rot90(a, 3),
    np.transpose,
    lambda a: np.rot90(a, 1).T[::-1].T,  # anti-transpose
)


def real_pairs() -> list[dict[str, np.ndarray]]:
    import rasterio

    from helpers import REAL_V1, REAL_V2

    s2_dirs = sorted(p for p in (REAL_V1 / "BigEarthNet-v1.0").iterdir() if p.is_dir())
    s2_dirs += sorted(p.parent for p in (REAL_V2 / "BigEarthNet-S2").glob("*/*/*_B02.tif"))
    s1_dirs = sorted(p for p in (REAL_V1 / "BigEarthNet-S1-v1.0").iterdir() if p.is_dir())
    s1_dirs += sorted(p.parent for p in (REAL_V2 / "BigEarthNet-S1").glob("*/*/*_VV.tif"))
    pairs = []
    for s2, s1 in zip(s2_dirs, s1_dirs, strict=False):
        bands = {}
        for b in ALL_BANDS:
            folder = s2 if b.sensor == "s2" else s1
            with rasterio.open(folder / f"{folder.name}_{b.name}.tif") as ds:
                bands[b.name] = ds.read(1)
        pairs.append(bands)
    return [{k: np.ascontiguousarray(f(v)) for k, v in p.items()} for p in pairs for f in VARIANTS]


def synthetic_pairs(shards: str, limit: int) -> list[dict[str, np.ndarray]]:
    files = sorted(Path(shards).rglob("part-*.parquet"))
    out: list[dict[str, np.ndarray]] = []
    for f in files:
        t = pq.read_table(f)
        for row in t.to_pylist():
            out.append({b.name: _array(row, b.name) for b in ALL_BANDS})
            if len(out) >= limit:
                return out
    return out


def _array(row: dict[str, Any], name: str) -> np.ndarray:
    value = row[name]
    b = BANDS[name]
    if isinstance(value, bytes):
        return np.frombuffer(value, np.dtype(b.dtype).newbyteorder("<")).reshape(b.shape)
    raise TypeError(f"{name}: {type(value)}")


def table(pairs: list[dict[str, np.ndarray]], layout: str) -> pa.Table:
    cols: dict[str, pa.Array] = {}
    if layout in ("binary14", "fixed14"):
        for b in ALL_BANDS:
            raw = [p[b.name].astype(np.dtype(b.dtype).newbyteorder("<")).tobytes() for p in pairs]
            cols[b.name] = pa.array(raw, pa.binary() if layout == "binary14" else pa.binary(b.nbytes))
    else:
        for g, names in GROUPS.items():
            stacked = np.stack([np.stack([p[n] for n in names]) for p in pairs])
            if layout == "group4":
                width = stacked[0].nbytes
                cols[g] = pa.array([s.tobytes() for s in stacked], pa.binary(width))
            else:  # fixed_shape_tensor
                cols[g] = pa.FixedShapeTensorArray.from_numpy_ndarray(stacked)
    return pa.table(cols)


def write(tab: pa.Table, compression: str, row_group: int, page_size: int | None = None) -> bytes:
    codec, level = [*compression.split("-"), None][:2]
    buf = io.BytesIO()
    pq.write_table(
        tab,
        buf,
        compression=codec,
        compression_level=int(level) if level else None,
        row_group_size=row_group,
        use_dictionary=False,
        write_statistics=False,
        data_page_size=page_size,
        write_page_checksum=True,
    )
    return buf.getvalue()


def read_rate(data: bytes, rows: int, verify: bool, repeat: int = 3) -> float:
    """Pairs per second on one thread: every row group, every column, from an in-memory file (page cache warm)."""
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        pf = pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=verify)
        for i in range(pf.num_row_groups):
            pf.read_row_group(i, use_threads=False)
        best = max(best, rows / (time.perf_counter() - start))
    return best


def measure(pairs: list[dict[str, np.ndarray]], rows: int, configs: list[tuple[str, str, int, int | None]]) -> list:
    reps = -(-rows // len(pairs))
    pairs = (pairs * reps)[:rows]
    tables: dict[str, pa.Table] = {}
    out = []
    for layout, compression, rg, page in configs:
        if layout not in tables:
            tables[layout] = table(pairs, layout)
        data = write(tables[layout], compression, rg, page)
        out.append(
            {
                "layout": layout,
                "compression": compression,
                "row_group": rg,
                "page_size": page or 1 << 20,
                "bytes_per_pair": round(len(data) / rows),
                "read_pairs_per_s": round(read_rate(data, rows, verify=False)),
                "read_verified_pairs_per_s": round(read_rate(data, rows, verify=True)),
            }
        )
        print(json.dumps(out[-1]), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic", help="a shard set to take synthetic rows from")
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "shard-format.json"))
    a = p.parse_args()
    layouts = ["binary14", "fixed14", "group4"]
    codecs = ["none", "lz4", "zstd-1", "zstd-3"]
    result: dict[str, Any] = {"machine": f"{os.cpu_count()} cores", "rows": a.rows}
    print("# real pixels", flush=True)
    real = real_pairs()
    # One row group = the distinct real pairs once: no page holds a value twice, so sizes are the real entropy's.
    rg = len(real)
    configs = [(lay, c, rg, None) for lay in layouts for c in codecs]
    configs += [("tensor4", c, rg, None) for c in ("none", "lz4")]
    result["real"] = measure(real, rg * max(1, a.rows // rg), configs)
    if a.synthetic:
        print("# synthetic pixels", flush=True)
        synthetic = synthetic_pairs(a.synthetic, a.rows)
        configs = [(lay, c, 128, None) for lay in layouts for c in codecs]
        configs += [("fixed14", c, g, None) for c in ("lz4", "zstd-1") for g in (64, 256, 512)]
        configs += [("fixed14", c, 128, page) for c in ("lz4", "zstd-1") for page in (64 << 10, 8 << 20)]
        result["synthetic"] = measure(synthetic, len(synthetic), configs)
    Path(a.out).write_text(json.dumps(result, indent=1))
    for source in ("real", "synthetic"):
        if source not in result:
            continue
        print(f"\n{source}:\n| layout | compression | row group | page | bytes/pair | read pairs/s | verified |")
        print("|---|---|---|---|---|---|---|")
        for r in result[source]:
            print(
                f"| {r['layout']} | {r['compression']} | {r['row_group']} | {r['page_size'] >> 10} KiB | "
                f"{r['bytes_per_pair']:,} | {r['read_pairs_per_s']:,} | {r['read_verified_pairs_per_s']:,} |"
            )


if __name__ == "__main__":
    main()
