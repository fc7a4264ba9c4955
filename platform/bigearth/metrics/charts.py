"""Charts of the metric suite, shared by training (MLflow artefacts) and evaluation (the report): the training curves
and the per-class scores, as PNG bytes."""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def percent(v: Any) -> str:
    """A score in [0, 1] as a percentage with two decimals, `n/a` for None."""
    return "n/a" if v is None else f"{100 * v:.2f}"


def plot_curves(history: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax1.plot(epochs, [h["val_loss"] for h in history], "o-", label="validation loss")
    ax1.set_xlabel("epoch")
    segmentation = any("val_miou" in h for h in history)
    ax1.set_ylabel("cross-entropy loss" if segmentation else "BCE loss")
    ax1.legend()
    scores = (
        (("val_miou", "mIoU"), ("val_pixel_accuracy", "pixel accuracy"), ("val_fw_iou", "frequency-weighted IoU"))
        if segmentation
        else (
            ("val_micro_f1", "micro F1"),
            ("val_macro_f1", "macro F1"),
            ("val_micro_ap", "micro AP"),
            ("val_macro_ap", "macro AP"),
        )
    )
    for key, label in scores:
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


def per_class_chart(m: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(m["per_class"])
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(names) + 1.5))
    ax.barh(y - 0.2, [m["per_class"][n]["f1"] or 0 for n in names], height=0.4, label="F1")
    ax.barh(y + 0.2, [m["per_class"][n]["ap"] or 0 for n in names], height=0.4, label="AP")
    ax.set_yticks(y, [n if len(n) < 48 else n[:45] + "..." for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("score")
    ax.set_title(f"Per-class scores on {m['split']} (micro F1 {percent(m['micro_f1'])} %)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
