"""Benchmark: what one classify-by-id lookup reads from a shard set (`PatchStore.arrays` of every band group, the
read behind POST /v1/classify {"patch_id"} and the quicklooks), cold: the store's cache is off, so every lookup is
a miss.

    PYTHONPATH=platform .venv/bin/python bench/patch_reads.py [--pairs 640] [--lookups 40] [--out /tmp/bench-patches]

Writes --pairs pairs with the `ShardWriter` of the code on the path (pixels: smooth random fields, so they compress
like imagery, not like noise), then times --lookups lookups of random pairs and counts the bytes the process read
(`rchar` of /proc/self/io: every read, page cache included). Run it once with the code before a change on the path
and once after: each writes and reads its own shard layout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no rchar")


def write(out: Path, pairs: int, seed: int = 0) -> list[str]:
    from bigearth.core.bands import ALL_BANDS
    from bigearth.core.storage import open_fs
    from bigearth.shards.format import Manifest, ShardWriter

    fs, _ = open_fs(str(out))
    (out / "train").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    writer = ShardWriter(fs, str(out / "train" / "part-00000.parquet"))
    ids = []
    for i in range(pairs):
        pid = f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{i // 100}_{i % 100}"
        row: dict[str, Any] = {
            "patch_id": pid,
            "s1_name": f"S1A_IW_GRDH_1SDV_20170613T165043_33UUP_{i // 100}_{i % 100}",
            "split": "train",
            "labels": ["Urban fabric"],
            "labels43": None,
            "country": "Austria",
            "tile": "33UUP",
            "s2_acquisition": dt.datetime(2017, 6, 13),
            "s1_acquisition": dt.datetime(2017, 6, 13),
            "epsg": 32633,
            "ulx": 404400.0,
            "uly": 5342400.0,
            "contains_seasonal_snow": False,
            "contains_cloud_or_shadow": False,
        }
        for b in ALL_BANDS:
            coarse = rng.normal(0, 1, size=(b.shape[0] // 10 + 1, b.shape[1] // 10 + 1))
            field = np.kron(coarse, np.ones((10, 10)))[: b.shape[0], : b.shape[1]]
            values = 1000 + 300 * field + rng.normal(0, 20, size=b.shape)
            row[b.name] = values.astype(b.dtype).tobytes()
        writer.write(row)
        ids.append(pid)
    writer.close()
    shards = [{"path": "train/part-00000.parquet", "rows": writer.rows, "split": "train"}]
    Manifest(pairs=pairs, splits={"train": pairs}, shards=shards).save(fs, str(out))
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=640)
    ap.add_argument("--lookups", type=int, default=40)
    ap.add_argument("--out", default="/tmp/bench-patches")
    a = ap.parse_args()
    from bigearth.core.bands import GROUPS
    from bigearth.shards.patches import PatchStore

    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    ids = write(out, a.pairs)
    try:
        store = PatchStore(str(out), cache_bytes=0)  # type: ignore[call-arg]
    except TypeError:  # the code before the page index: a row-group cache counted in entries
        store = PatchStore(str(out), cache_row_groups=0)  # type: ignore[call-arg]
    groups = {g: GROUPS[g] for g in ("s1", "s2_10m", "s2_20m", "s2_60m")}
    picks = np.random.default_rng(1).choice(ids, a.lookups)
    store.arrays(str(picks[0]), groups)  # warm the imports and the footer
    before, t = _rchar(), time.perf_counter()
    for pid in picks:
        store.arrays(str(pid), groups)
    took, read = time.perf_counter() - t, _rchar() - before
    size = (out / "train" / "part-00000.parquet").stat().st_size
    print(
        json.dumps(
            {
                "pairs": a.pairs,
                "file_mb": round(size / 2**20, 1),
                "lookups": a.lookups,
                "mb_read_per_lookup": round(read / a.lookups / 2**20, 3),
                "ms_per_lookup": round(took / a.lookups * 1000, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
