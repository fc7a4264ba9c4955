"""What a model's task trains and validates with (`ModelSpec.task`, `BigEarthModel.task`):

- `classification`: `BCEWithLogitsLoss` on the multi-hot `labels`, validated by `MultilabelMetrics`, scored by
  `val_macro_ap`;
- `segmentation`: cross-entropy on the per-pixel `mask` with `IGNORE_INDEX` pixels left out (`MaskedCrossEntropy`:
  the mean over the batch's scored pixels, 0 for a batch without any), validated by `SegmentationMetrics`, scored by
  `val_miou`.

Every epoch's metrics carry `val_score`: the task's score, which early stopping (`loop.advance`), the checkpoints
kept (`bigearth.models.checkpoints.retain`, `find_best`) and Ray Train's `checkpoint_score_attribute` rank by.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bigearth.core.labels import IGNORE_INDEX

TASKS = ("classification", "segmentation")
#: the batch key a task's loss compares the logits with
TARGET = {"classification": "labels", "segmentation": "mask"}
#: the epoch metric a task is ranked by, copied into `val_score`
SCORE = {"classification": "val_macro_ap", "segmentation": "val_miou"}
#: validation figures that are not one number an epoch (kept out of `metrics.jsonl`, logged at the end)
NOT_EPOCH_FIGURES = {
    "classification": ("per_class", "samples", "classes_without_positives"),
    "segmentation": ("per_class_iou", "classes_without_pixels", "presence_share", "image"),
}


class MaskedCrossEntropy(nn.Module):
    """Cross-entropy of logits `[B, C, H, W]` against a uint8 mask `[B, H, W]`, `IGNORE_INDEX` pixels left out: the
    mean over the scored pixels of the batch; a batch without any scored pixel gives 0 (and zero gradients), never
    NaN (torch's mean reduction divides by zero there)."""

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        target = mask.long()
        total = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / (target != IGNORE_INDEX).sum().clamp(min=1)


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown model task {task!r}; expected one of {list(TASKS)}")
    return task


def loss_for(task: str) -> nn.Module:
    return MaskedCrossEntropy() if check_task(task) == "segmentation" else nn.BCEWithLogitsLoss()


def metrics_for(task: str, nomenclature: int, device: Any = None) -> Any:
    """The validation metric of a task (a torchmetrics Metric, synced over the workers)."""
    if check_task(task) == "segmentation":
        from bigearth.metrics.segmentation import SegmentationMetrics

        return SegmentationMetrics(nomenclature, device=device)
    from bigearth.metrics.multilabel import MultilabelMetrics

    return MultilabelMetrics(nomenclature, device=device)


def update(metric: Any, task: str, logits: torch.Tensor, batch: dict[str, Any]) -> None:
    """Add a validation batch: class probabilities and labels (classification), logits, mask and labels (the
    image-level figures of the maps) for segmentation."""
    if task == "segmentation":
        metric.update(logits, batch["mask"], batch["labels"])
    else:
        metric.update(torch.sigmoid(logits), batch["labels"])


def validated_pairs(task: str, scores: dict[str, Any]) -> int:
    return int(scores["patches"] if task == "segmentation" else scores["samples"])


def epoch_figures(task: str, scores: dict[str, Any]) -> dict[str, Any]:
    """The `val_*` entries of an epoch's metrics from the validation scores, and `val_score` (0 where the task's
    score is undefined, so that every ranking, Ray Train's included, has a number); a segmentation model's
    image-level figures (of its predicted maps) as `val_image_*`."""
    left_out = NOT_EPOCH_FIGURES[check_task(task)]
    out = {f"val_{k}": v for k, v in scores.items() if k not in left_out}
    if task == "segmentation" and scores.get("image"):
        image = scores["image"]
        out.update({f"val_image_{k}": v for k, v in image.items() if k not in NOT_EPOCH_FIGURES["classification"]})
    score = out.get(SCORE[task])
    out["val_score"] = 0.0 if score is None else score  # undefined (no scored pixel, no positive): ranked last
    return out
