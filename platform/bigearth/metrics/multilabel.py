"""The papers' multi-label metrics, synced across workers under torch.distributed: torchmetrics for the per-class,
micro and macro figures; one `Metric` of our own for the sample-wise and ranking figures (vectorised: torchmetrics'
LRAP loops over samples in Python, and its ranking loss counts some ties as right).

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
    MultilabelF1Score,
    MultilabelFBetaScore,
    MultilabelPrecision,
    MultilabelRecall,
)

from bigearth.core import labels as lab

#: Rows per step of the sample-wise figures (their ranking terms hold [rows, C, C] booleans).
CHUNK = 4096
#: The per-class scores (thresholded ones and AP); each has a micro and a macro figure.
PER_CLASS = ("precision", "recall", "f1", "f2", "ap")


class SampleScores(Metric):
    """Sample-averaged precision / recall / F1 / F2, Hamming loss, subset accuracy, and the ranking figures
    (one-error, coverage, ranking loss, LRAP) vectorised over each chunk of rows: no per-sample loop, no host sync."""

    full_state_update = False
    precision: torch.Tensor
    recall: torch.Tensor
    f1: torch.Tensor
    f2: torch.Tensor
    wrong_labels: torch.Tensor
    exact: torch.Tensor
    one_error: torch.Tensor
    ranking_loss: torch.Tensor
    coverage: torch.Tensor
    lrap: torch.Tensor
    n: torch.Tensor
    cells: torch.Tensor

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold
        names = (
            "precision",
            "recall",
            "f1",
            "f2",
            "wrong_labels",
            "exact",
            "one_error",
            "ranking_loss",
            "coverage",
            "lrap",
            "n",
            "cells",
        )
        for name in names:
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:  # type: ignore[override]
        for i in range(0, len(scores), CHUNK):  # bounded [chunk, C, C] temporaries for the ranking figures
            self._update(scores[i : i + CHUNK], targets[i : i + CHUNK])

    def _update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        pred = scores > self.threshold  # as torchmetrics (and reBEN): above the threshold
        true = targets.bool()
        tp = (pred & true).sum(1).double()
        npred, ntrue = pred.sum(1).double(), true.sum(1).double()
        classes = true.shape[1]

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
        # at_least[b, j, l]: class l scored at least as high as class j (ties count against j: scikit-learn's rule)
        at_least = scores[:, None, :] >= scores[:, :, None]
        rank = at_least.sum(2).double()  # 1-based rank of each class, ties at their worst
        # ranking loss: (true j, false l) pairs with l at least as high as j, over |T| |F|
        wrong = (at_least & true[:, :, None] & ~true[:, None, :]).sum((1, 2)).double()
        self.ranking_loss += ratio(wrong, ntrue * (classes - ntrue)).sum()
        # coverage: the rank of the lowest-scored true class (0 for a pair without labels), scikit-learn's
        self.coverage += torch.where(true, rank, torch.zeros_like(rank)).amax(1).sum()
        # LRAP: per true class j, (true classes at least as high as j) / rank of j; 1 when no or every label is true
        hits = (at_least & true[:, None, :]).sum(2).double()
        per_pair = ratio(torch.where(true, hits / rank, torch.zeros_like(rank)).sum(1), ntrue)
        self.lrap += torch.where((ntrue == 0) | (ntrue == classes), torch.ones_like(per_pair), per_pair).sum()
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
            "coverage": self.coverage / n,
            "lrap": self.lrap / n,
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
        synced = torch.distributed.is_available() and torch.distributed.is_initialized()
        if synced and not self.count:
            self._empty_lists()
        values = self.collection.compute()
        support = self.support.clone()
        count = torch.tensor(self.count, device=support.device)
        if synced:
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

    def _empty_lists(self) -> None:
        """On a worker that had no batch: every list state (AP's scores and targets) as one [0, C] tensor of the
        dtype the others hold, so that the sync gathers states of one rank and dtype from every worker (torchmetrics
        makes an empty list a 1-d float tensor: a collective mismatch, a crash under gloo, a hang under NCCL)."""
        classes = len(self.names)
        for metric in self.collection.values():
            for name, default in metric._defaults.items():
                if isinstance(default, list) and not getattr(metric, name):
                    dtype = torch.long if name == "target" else torch.float32
                    setattr(metric, name, [torch.zeros((0, classes), dtype=dtype, device=self.support.device)])


def _num(value: Any) -> float | None:
    """A float for JSON; None where the metric is undefined (e.g. AP of a class with no positives)."""
    v = float(value)
    return None if v != v else v
