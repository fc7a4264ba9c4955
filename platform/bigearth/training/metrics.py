"""The paper's multi-label metrics with torchmetrics: micro/macro precision, recall, F1 (threshold 0.5) and
average precision, plus per-class scores keyed by class name. Under torch.distributed the states are synced
across workers when computed, so every worker sees the global figures."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MultilabelAveragePrecision,
    MultilabelF1Score,
    MultilabelPrecision,
    MultilabelRecall,
)

from bigearth import labels as lab


class MultilabelMetrics:
    def __init__(self, num_classes: int = 19, threshold: float = 0.5, device: Any = "cpu") -> None:
        self.names = lab.class_names(num_classes)  # type: ignore[arg-type]
        kw: dict[str, Any] = {"num_labels": num_classes, "threshold": threshold}
        metrics: dict[str, Any] = {
            f"{avg}_{name}": cls(average=avg, **kw)
            for avg in ("micro", "macro", "none")
            for name, cls in (
                ("precision", MultilabelPrecision),
                ("recall", MultilabelRecall),
                ("f1", MultilabelF1Score),
            )
        }
        for avg in ("micro", "macro", "none"):
            metrics[f"{avg}_ap"] = MultilabelAveragePrecision(num_labels=num_classes, average=avg)
        self.collection = MetricCollection(metrics).to(device)
        self.support = torch.zeros(num_classes, dtype=torch.long, device=device)
        self.count = 0

    def update(self, probabilities: torch.Tensor, targets: torch.Tensor) -> None:
        t = targets.long()
        self.collection.update(probabilities.float(), t)
        self.support += t.sum(0)
        self.count += len(t)

    def compute(self) -> dict[str, Any]:
        values = self.collection.compute()
        support = self.support.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(support)
        out: dict[str, Any] = {k: _num(v) for k, v in values.items() if not k.startswith("none_")}
        out["per_class"] = {
            name: {
                "precision": _num(values["none_precision"][i]),
                "recall": _num(values["none_recall"][i]),
                "f1": _num(values["none_f1"][i]),
                "ap": _num(values["none_ap"][i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(self.names)
        }
        count = torch.tensor(self.count, device=support.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(count)
        out["samples"] = int(count.item())
        return out


def _num(value: Any) -> float | None:
    """A float for JSON; None where the metric is undefined (e.g. AP of a class with no positives)."""
    v = float(value)
    return None if v != v else v
