"""Charts of the metric suite, shared by training (MLflow artefacts) and evaluation (the report): the training curves
the per-class scores and a headline figure per country and season, as PNG bytes."""

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


def by_group_chart(by: dict[str, dict[str, dict[str, Any]]], figure: str, label: str, split: str) -> bytes:
    """Bars of one headline `figure` (e.g. `macro_ap`, `miou`) per group, one panel per grouping (`{"country":
    by_country, "season": by_season}`, `bigearth.evaluation.groups.by_group`), each bar labelled with its pair
    count; groups marked `few_pairs` hatched and pale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, groups) for name, groups in by.items() if groups]
    rows = [len(groups) for _, groups in panels] or [1]
    fig, axes = plt.subplots(
        max(1, len(panels)),
        1,
        figsize=(8, 0.35 * sum(rows) + 1.2 * len(rows) + 0.5),
        squeeze=False,
        gridspec_kw={"height_ratios": rows},
    )
    for ax, (name, groups) in zip(axes[:, 0], panels, strict=False):
        names = list(groups)
        y = np.arange(len(names))
        values = [groups[n].get(figure) or 0 for n in names]
        few = [bool(groups[n].get("few_pairs")) for n in names]
        bars = ax.barh(y, values, height=0.6, color=["#9ecae1" if f else "#3182bd" for f in few])
        for bar, f, n in zip(bars, few, names, strict=True):
            if f:
                bar.set_hatch("//")
            ax.annotate(
                f"{groups[n]['pairs']} pairs",
                (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
        ax.set_yticks(y, names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.15)
        ax.set_ylabel(name)
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no groups", ha="center", va="center")
    axes[-1, 0].set_xlabel(f"{label} (hatched: few pairs)")
    fig.suptitle(f"{label} by country and season on {split}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
