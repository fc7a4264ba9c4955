"""The papers' multi-label metrics with torchmetrics, synced across workers under torch.distributed.

Thresholded at 0.5: precision, recall, F1 and F2, each micro, macro and sample-averaged; Hamming loss; subset
accuracy. From the scores: average precision (micro, macro), one-error, coverage, ranking loss and label ranking
average precision (LRAP). Per-class scores are keyed by class name. The conventions (docs/reproduce.md):

- every macro figure averages over the classes with at least one positive in the evaluated split; a class
  without positives has no recall or AP (null) and is listed under `classes_without_positives`;
- sample averages take 0 for an undefined per-sample ratio (no predicted label: precision 0), as scikit-learn's
  `zero_division=0`;
- `coverage` is scikit-learn's `coverage_error` (how far down the ranking one must go to find every true label,
  1 = the top label); `one_error` the share of samples whose top-scored class is not one of theirs.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MultilabelAveragePrecision,
    MultilabelCoverageError,
    MultilabelF1Score,
    MultilabelFBetaScore,
    MultilabelPrecision,
    MultilabelRankingAveragePrecision,
    MultilabelRecall,
)

from bigearth import labels as lab

#: The per-class scores (thresholded ones and AP); each has a micro and a macro figure.
PER_CLASS = ("precision", "recall", "f1", "f2", "ap")


class SampleScores(Metric):
    """Sample-averaged precision / recall / F1 / F2, Hamming loss, subset accuracy, one-error, ranking loss."""

    full_state_update = False
    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor
    f2: torch.Tensor
    wrong_labels: torch.Tensor
    exact: torch.Tensor
    one_error: torch.Tensor
    ranking_loss: torch.Tensor
    n: torch.Tensor
    cells: torch.Tensor

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold
        names = ("precision", "recall", "f1", "f2", "wrong_labels", "exact", "one_error", "ranking_loss", "n", "cells")
        for name in names:
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:  # type: ignore[override]
        pred = scores > self.threshold  # as torchmetrics (and reBEN): above the threshold
        true = targets.bool()
        tp = (pred & true).sum(1).double()
        npred, ntrue = pred.sum(1).double(), true.sum(1).double()

        def ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.where(b > 0, a / b.clamp(min=1), torch.zeros_like(a))

        self.precision += ratio(tp, npred).sum()
        self.recall += ratio(tp, ntrue).sum()
        self.f1 += ratio(2 * tp, npred + ntrue).sum()
        self.f2 += ratio(5 * tp, 4 * ntrue + npred).sum()
        self.wrong_labels += (pred != true).sum().double()
        self.exact += (pred == true).all(1).sum().double()
        top = scores.argmax(1)
        self.one_error += (~true.gather(1, top[:, None])[:, 0]).sum().double()
        # ranking loss: (true, false) pairs ordered wrongly, a tie counting as wrong (scikit-learn's convention;
        # torchmetrics' MultilabelRankingLoss counts some ties as right)
        wrong = (scores[:, None, :] >= scores[:, :, None]) & true[:, :, None] & ~true[:, None, :]
        pairs = ntrue * (true.shape[1] - ntrue)
        self.ranking_loss += ratio(wrong.sum((1, 2)).double(), pairs).sum()
        self.n += float(len(scores))
        self.cells += float(scores.numel())

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.n.clamp(min=1)
        return {
            "samples_precision": self.precision / n,
            "samples_recall": self.recall / n,
            "samples_f1": self.f1 / n,
            "samples_f2": self.f2 / n,
            "hamming_loss": self.wrong_labels / self.cells.clamp(min=1),
            "subset_accuracy": self.exact / n,
            "one_error": self.one_error / n,
            "ranking_loss": self.ranking_loss / n,
        }


class MultilabelMetrics:
    def __init__(self, num_classes: int = 19, threshold: float = 0.5, device: Any = "cpu") -> None:
        self.names = lab.class_names(num_classes)  # type: ignore[arg-type]
        kw: dict[str, Any] = {"num_labels": num_classes, "threshold": threshold}
        metrics: dict[str, Any] = {}
        for avg in ("micro", "none"):
            metrics[f"{avg}_precision"] = MultilabelPrecision(average=avg, **kw)
            metrics[f"{avg}_recall"] = MultilabelRecall(average=avg, **kw)
            metrics[f"{avg}_f1"] = MultilabelF1Score(average=avg, **kw)
            metrics[f"{avg}_f2"] = MultilabelFBetaScore(beta=2.0, average=avg, **kw)
            metrics[f"{avg}_ap"] = MultilabelAveragePrecision(num_labels=num_classes, average=avg)
        metrics["coverage"] = MultilabelCoverageError(num_labels=num_classes)
        metrics["lrap"] = MultilabelRankingAveragePrecision(num_labels=num_classes)
        metrics["by_sample"] = SampleScores(threshold)
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
        count = torch.tensor(self.count, device=support.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(support)
            torch.distributed.all_reduce(count)
        present = support > 0
        per_class: dict[str, dict[str, Any]] = {}
        for i, name in enumerate(self.names):
            row: dict[str, Any] = {k: _num(values[f"none_{k}"][i]) for k in PER_CLASS}
            if not present[i]:  # no positives: recall and AP are undefined (precision/F1 of false alarms: 0)
                row["recall"] = row["ap"] = None
            row["support"] = int(support[i])
            per_class[name] = row
        out: dict[str, Any] = {}
        for k in PER_CLASS:
            out[f"micro_{k}"] = _num(values[f"micro_{k}"])
            kept = [per_class[n][k] for n, p in zip(self.names, present.tolist(), strict=True) if p]
            out[f"macro_{k}"] = sum(kept) / len(kept) if kept and None not in kept else None
        for k, v in values.items():
            if not k.startswith(("micro_", "none_")):
                out[k] = _num(v)
        out["per_class"] = per_class
        out["classes_without_positives"] = [n for n, p in zip(self.names, present.tolist(), strict=True) if not p]
        out["samples"] = int(count.item())
        return out


def _num(value: Any) -> float | None:
    """A float for JSON; None where the metric is undefined (e.g. AP of a class with no positives)."""
    v = float(value)
    return None if v != v else v
