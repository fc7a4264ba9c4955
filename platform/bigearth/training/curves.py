"""Per-epoch metrics as JSON lines beside the checkpoints, and a plot of the training curves."""

from __future__ import annotations

import json
from typing import Any

from bigearth.core.storage import StorageOptions, join, open_fs
from bigearth.metrics.charts import plot_curves


def write_history(run_dir: str, history: list[dict[str, Any]], storage: StorageOptions | None = None) -> None:
    """`metrics.jsonl` (one line per epoch) and `curves.png` in the run folder (local or object storage)."""
    fs, root = open_fs(run_dir, storage)
    fs.makedirs(root, exist_ok=True)
    with fs.open(join(root, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(h) + "\n" for h in history))
    with fs.open(join(root, "curves.png"), "wb") as f:
        f.write(plot_curves(history))
