"""The segmentation metrics, from one confusion matrix summed over patches (and across workers under
torch.distributed): per-class IoU, mean IoU, pixel accuracy and frequency-weighted IoU; plus the image-level
multi-label figures of the predicted maps. The conventions (docs/evaluation.md):

- the confusion matrix has the reference class in rows and the predicted class in columns; a pixel whose reference
  is `IGNORE_INDEX` (a CLC code without a 19-class target, or every pixel of a pair ingested without a reference map)
  is counted nowhere: neither as a reference nor as a prediction;
- a class is *present* when it has at least one reference pixel; IoU = TP / (TP + FP + FN) of a present class, null
  for a class without reference pixels (listed under `classes_without_pixels`, even if it was predicted: its false
  positives still lower the IoU of the classes whose pixels they took);
- `miou` is the mean IoU over the present classes (null when no pixel was scored); `pixel_accuracy` is the trace over
  the scored pixels; `fw_iou` sums, over the present classes, the class's share of the reference pixels times its IoU;
- a patch without any scored pixel counts in `patches` and in `unscored_patches`, and adds nothing to the confusion;
- image-level: a class is predicted present in a patch when its predicted map covers at least `presence_share` of
  the patch's pixels (all of them, ignored or not: the model predicts a class everywhere); the shares are the scores
  and the patch's labels the truth of `bigearth.metrics.multilabel.MultilabelMetrics`, so every figure there (F1,
  AP, ...) keeps its conventions. Its threshold is "above" (as torchmetrics); `presence_threshold` turns "at least
  this share of a map's pixels" into the exactly equivalent "above" threshold, halfway between two pixel counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from bigearth.core import labels as lab
from bigearth.metrics.multilabel import MultilabelMetrics

#: The default share of a patch's pixels a predicted class must cover (at least) to count as present at image level.
PRESENCE_SHARE = 0.01
#: Pixels of a predicted map (the reference maps' 120 x 120 grid).
MAP_PIXELS = 120 * 120


def presence_threshold(presence_share: float, pixels: int = MAP_PIXELS) -> float:
    """The "above" threshold on class shares (multiples of 1 / `pixels`) that selects exactly the classes covering
    at least `presence_share` of the map: halfway below the smallest pixel count that reaches the share, so that
    float rounding of the shares never moves a class across it. `presence_share` in (0, 1]."""
    if not 0 < presence_share <= 1:
        raise ValueError(f"presence_share must be in (0, 1], got {presence_share}")
    need = int(np.ceil(presence_share * pixels - 1e-9))  # the fewest pixels that cover the share
    return (max(need, 1) - 0.5) / pixels


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = lab.IGNORE_INDEX
) -> torch.Tensor:
    """Per-image confusion matrices, int64 [B, C, C] (rows: reference class, columns: predicted class), of integer
    maps `pred` and `target` [B, H, W]; pixels whose target is `ignore_index` are counted nowhere. One bincount of
    image * C * C + target * C + pred over the scored pixels."""
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"pred and target must both be [B, H, W], got {tuple(pred.shape)} and {tuple(target.shape)}")
    b = pred.shape[0]
    t = target.reshape(b, -1).long()
    p = pred.reshape(b, -1).long().to(t.device)
    scored = t != ignore_index
    if bool(((t < 0) | (t >= num_classes))[scored].any()):
        raise ValueError(f"reference classes outside 0..{num_classes - 1} (and the ignore index {ignore_index})")
    if bool(((p < 0) | (p >= num_classes)).any()):
        raise ValueError(f"predicted classes outside 0..{num_classes - 1}")
    image = torch.arange(b, device=t.device)[:, None].expand_as(t)
    cells = num_classes * num_classes
    index = (image * cells + t * num_classes + p)[scored]
    return torch.bincount(index, minlength=b * cells).reshape(b, num_classes, num_classes)


def scores_from_confusion(cm: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """The pixel figures of a summed confusion matrix [C, C] (rows: reference, columns: prediction); see the module's
    conventions. `classes` names the rows in order."""
    cm = np.asarray(cm, dtype=np.int64)
    if cm.shape != (len(classes), len(classes)):
        raise ValueError(f"a confusion matrix of {len(classes)} classes must be square, got {cm.shape}")
    tp = np.diag(cm).astype(np.float64)
    reference = cm.sum(1).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    scored = int(cm.sum())
    present = reference > 0
    iou = np.divide(tp, reference + predicted - tp, out=np.zeros_like(tp), where=present)
    per_class = {name: (float(iou[i]) if present[i] else None) for i, name in enumerate(classes)}
    return {
        "miou": float(iou[present].mean()) if present.any() else None,
        "per_class_iou": per_class,
        "pixel_accuracy": float(tp.sum() / scored) if scored else None,
        "fw_iou": float((reference[present] / scored * iou[present]).sum()) if scored else None,
        "scored_pixels": scored,
        "classes_without_pixels": [name for i, name in enumerate(classes) if not present[i]],
    }


def class_shares(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each class's share of each predicted map [B, H, W] -> float32 [B, C]."""
    b = pred.shape[0]
    flat = pred.reshape(b, -1).long()
    offsets = torch.arange(b, device=flat.device)[:, None] * num_classes
    counts = torch.bincount((flat + offsets).reshape(-1), minlength=b * num_classes).reshape(b, num_classes)
    return counts.float() / max(flat.shape[1], 1)


class SegmentationMetrics(Metric):
    """The pixel figures of the summed confusion matrix, the patch counts, and the image-level multi-label figures of
    the predicted maps (module docstring). `update(logits [B, C, H, W] float or class map [B, H, W] int, mask
    [B, H, W], labels [B, C] multi-hot or None)`."""

    full_state_update = False
    confusion: torch.Tensor
    patches: torch.Tensor
    unscored_patches: torch.Tensor
    labelled: torch.Tensor
    image: MultilabelMetrics
    map_pixels: int

    def __init__(self, num_classes: int = 19, device: Any = None, presence_share: float = PRESENCE_SHARE) -> None:
        super().__init__()
        presence_threshold(presence_share)  # refused here, before any update, when out of range
        self.num_classes = num_classes
        self.presence_share = presence_share
        self.names = lab.class_names(num_classes)  # type: ignore[arg-type]
        zeros = torch.zeros((num_classes, num_classes), dtype=torch.int64)
        self.add_state("confusion", default=zeros, dist_reduce_fx="sum")
        self.add_state("patches", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("unscored_patches", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        # patches updated with labels, summed over the workers: every worker computes (and syncs) the image-level
        # figures when any had some, a worker without a labelled batch (or any batch) included
        self.add_state("labelled", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self._device_arg = device or "cpu"
        self._image_for(MAP_PIXELS)  # the threshold depends on the maps' pixel count (`presence_threshold`)
        if device is not None:
            self.to(device)

    def update(  # type: ignore[override]
        self, preds: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor | None = None
    ) -> None:
        pred = preds.argmax(1) if preds.is_floating_point() else preds
        if pred.dim() != 3:
            raise ValueError(f"predictions must be logits [B, C, H, W] or a class map [B, H, W], got {preds.shape}")
        mask = mask.to(self.confusion.device)
        pred = pred.to(self.confusion.device)
        per_image = confusion_matrix(pred, mask, self.num_classes)
        self.confusion += per_image.sum(0)
        self.patches += per_image.shape[0]
        self.unscored_patches += int((per_image.sum((1, 2)) == 0).sum())
        if labels is not None:
            pixels = int(pred.shape[1] * pred.shape[2])
            if pixels != self.map_pixels:
                if self.image.count:
                    raise ValueError(f"maps of {pixels} pixels after maps of {self.map_pixels}: one size per metric")
                self._image_for(pixels, self.image.support.device)
            self.labelled += int(pred.shape[0])
            where = self.image.support.device  # the image-level metrics stay where they were made
            self.image.update(class_shares(pred, self.num_classes).to(where), labels.to(where))

    def forward(self, *args: Any, **kwargs: Any) -> None:
        """Accumulates only (torchmetrics' forward would also compute per-batch figures and reset the image-level
        metrics, which are not states of this Metric)."""
        self.update(*args, **kwargs)

    def compute(self) -> dict[str, Any]:
        out = scores_from_confusion(self.confusion.cpu().numpy(), self.names)
        out["patches"] = int(self.patches)
        out["unscored_patches"] = int(self.unscored_patches)
        out["presence_share"] = self.presence_share
        out["image"] = self.image.compute() if int(self.labelled) > 0 else None  # synced: the same on every worker
        return out

    def reset(self) -> None:
        super().reset()
        self._image_for(self.map_pixels, self.confusion.device)

    def _image_for(self, pixels: int, device: Any = None) -> None:
        """New image-level metrics for maps of `pixels` pixels (their threshold: `presence_threshold`)."""
        threshold = presence_threshold(self.presence_share, pixels)
        self.image = MultilabelMetrics(self.num_classes, threshold=threshold, device=device or self._device_arg)
        self.map_pixels = pixels
