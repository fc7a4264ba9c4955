"""Peak memory of the training input over an epoch and over an epoch four times as long (same shard set, every
row group four times): the shuffle buffer bounds memory, the epoch's length does not.

    .venv/bin/python bench/loader_memory.py --shards .bench/shards-bench [--out bench/results/loader-memory.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bigearth.input.loader import RowGroupLoader, row_groups
from input_pipeline import PeakMemory


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--shuffle-buffer", type=int, default=2048)
    p.add_argument("--out")
    a = p.parse_args()
    plan = row_groups(a.shards, a.split)
    list(RowGroupLoader(plan[:4], 256))  # warm-up: torch imported, allocator arenas created
    out = {}
    for name, k in (("epoch_x1", 1), ("epoch_x4", 4), ("epoch_x1_again", 1)):  # the first pays allocator growth
        with PeakMemory() as m:
            n = sum(len(b["patch_id"]) for b in RowGroupLoader(plan * k, 256, shuffle_buffer=a.shuffle_buffer, seed=0))
        out[name] = {"pairs": n, "peak_above_start_mb": m.delta_mb, "machine_used_peak_mb": round(m.peak / 2**20)}
    print(json.dumps(out))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
