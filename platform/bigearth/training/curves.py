"""Per-epoch metrics as JSON lines beside the checkpoints, and a plot of the training curves."""

from __future__ import annotations

import io
import json
from typing import Any

from bigearth.storage import StorageOptions, join, open_fs


def write_history(run_dir: str, history: list[dict[str, Any]], storage: StorageOptions | None = None) -> None:
    """`metrics.jsonl` (one line per epoch) and `curves.png` in the run folder (local or object storage)."""
    fs, root = open_fs(run_dir, storage)
    fs.makedirs(root, exist_ok=True)
    with fs.open(join(root, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(h) + "\n" for h in history))
    with fs.open(join(root, "curves.png"), "wb") as f:
        f.write(plot_curves(history))


def plot_curves(history: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("BCE loss")
    ax1.legend()
    for key, label in (
        ("val_micro_f1", "micro F1"),
        ("val_macro_f1", "macro F1"),
        ("val_micro_ap", "micro AP"),
        ("val_macro_ap", "macro AP"),
    ):
        ax2.plot(epochs, [h.get(key) or 0 for h in history], "o-", label=label)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation score")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.suptitle("Training curves")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
