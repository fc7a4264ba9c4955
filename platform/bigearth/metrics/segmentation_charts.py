"""Charts of the segmentation figures for the evaluation report, as PNG bytes: the per-class IoU (bars in the
classes' CORINE colours) and the confusion matrix normalised per reference class."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from bigearth.core.labels import BEN19_COLOURS
from bigearth.metrics.charts import percent


def _short(name: str) -> str:
    return name if len(name) < 48 else name[:45] + "..."


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def per_class_iou_chart(m: dict[str, Any]) -> bytes:
    """Horizontal bars of `m["per_class_iou"]`, each class in its colour; `n/a` for a class without reference
    pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(m["per_class_iou"])
    values = [m["per_class_iou"][n] for n in names]
    colours = [np.asarray(BEN19_COLOURS[i % len(BEN19_COLOURS)]) / 255 for i in range(len(names))]
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(names) + 1.5))
    ax.barh(y, [v or 0 for v in values], color=colours, edgecolor="0.3", linewidth=0.5)
    for i, v in enumerate(values):
        if v is None:
            ax.text(0.01, i, "n/a (no reference pixels)", va="center", fontsize=7, color="0.4")
    ax.set_yticks(y, [_short(n) for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("IoU")
    ax.set_title(f"Per-class IoU on {m['split']} (mIoU {percent(m['miou'])} %)")
    return _png(fig)


def confusion_chart(cm: np.ndarray, names: Sequence[str], split: str) -> bytes:
    """The confusion matrix (rows: reference class, columns: predicted class) as shares of each row's reference
    pixels; a row without reference pixels is left blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(1, keepdims=True)
    shares = np.divide(cm, rows, out=np.full_like(cm, np.nan), where=rows > 0)
    n = len(names)
    fig, ax = plt.subplots(figsize=(0.45 * n + 4, 0.45 * n + 2.5))
    image = ax.imshow(shares, cmap="viridis", vmin=0, vmax=1)
    labels = [_short(x)[:28] for x in names]
    ax.set_xticks(np.arange(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(np.arange(n), labels, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("reference class")
    ax.set_title(f"Confusion matrix on {split} (share of each reference class's pixels)")
    fig.colorbar(image, ax=ax, fraction=0.04)
    return _png(fig)
