"""Cross-modal alignment: projection heads that map S1 and S2 features into one normalised space, and the
contrastive objective that trains them (`retrieval.cross_modal: aligned`).

The objective is a symmetric InfoNCE between the two halves of each pair in a batch (the S1 projection of pair i
against the S2 projections of every pair, and back): a lower bound on the mutual information between the
modalities, the inter-modal term of Sumbul et al. 2022 (SS-CM-RSIR). Because BigEarthNet is labelled, the target
of row i is not one-hot: a share `label_positives` of it is spread over the pairs of the batch in proportion to
their label overlap with pair i (Jaccard of the multi-hot labels; pair i itself has 1), so radar and optical
patches of the same land cover are drawn together, not only the two halves of one pair. `intra` adds the same
soft-target loss within each modality (S1 against S1, S2 against S2, the pair itself left out), which keeps
same-modality search in the aligned space as good as in the label space.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CROSS_MODAL = ("aligned", "logits")


@dataclass(frozen=True)
class AlignConfig:
    """The `retrieval` section of a training config, as the model takes it."""

    cross_modal: str = (
        "logits"  # a model built without a config behaves as before: the training config defaults to aligned
    )
    dim: int = 128
    temperature: float = 0.5
    label_positives: float = 1.0
    intra: float = 1.0
    weight: float = 1.0
    # which encoders the alignment loss trains besides the projection heads: none, s1 (S2 acts as the teacher), both
    encoders: str = "none"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> AlignConfig:
        cfg = cls(**dict(d or {}))
        if cfg.cross_modal not in CROSS_MODAL:
            raise ValueError(f"retrieval.cross_modal must be one of {list(CROSS_MODAL)}, got {cfg.cross_modal!r}")
        if cfg.encoders not in ("none", "s1", "both"):
            raise ValueError(f"retrieval.encoders must be one of ['none', 's1', 'both'], got {cfg.encoders!r}")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Projection(nn.Module):
    """features -> `dim`: Linear, GELU, Linear (normalised by the caller)."""

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        hidden = max(2 * dim, 256)
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x.float())
        return out


def soft_targets(labels: torch.Tensor | None, n: int, share: float, device: torch.device) -> torch.Tensor:
    """[n, n] rows summing to 1: (1 - share) on the pair itself, `share` over the batch by label Jaccard."""
    eye = torch.eye(n, device=device)
    if labels is None or share <= 0:
        return eye
    y = labels.float().to(device)
    inter = y @ y.T
    union = y.sum(1, keepdim=True) + y.sum(1) - inter
    jaccard = torch.where(union > 0, inter / union.clamp(min=1), eye)
    return (1 - share) * eye + share * jaccard / jaccard.sum(1, keepdim=True)


def _soft_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


def alignment_loss(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor | None, cfg: AlignConfig) -> torch.Tensor:
    """Symmetric soft-target InfoNCE between normalised S1 (`z1`) and S2 (`z2`) projections of the same pairs,
    plus `cfg.intra` times the same loss within each modality (self-similarity masked out)."""
    n = z1.shape[0]
    t = soft_targets(labels, n, cfg.label_positives, z1.device)
    cross = z1 @ z2.T / cfg.temperature
    # row j of `cross.T` is S2 query j against every S1 item: its target is row j of `t` (label overlap is symmetric)
    loss = 0.5 * (_soft_ce(cross, t) + _soft_ce(cross.T, t))
    if cfg.intra > 0 and n > 1:
        off = ~torch.eye(n, dtype=torch.bool, device=z1.device)
        ti = soft_targets(labels, n, 1.0, z1.device) * off
        keep = ti.sum(1) > 0  # rows with another pair sharing a label
        if keep.any():
            ti = ti[keep] / ti[keep].sum(1, keepdim=True)
            for z in (z1, z2):  # the pair itself out of the softmax (a large negative, not -inf: 0 * -inf is nan)
                sim = (z @ z.T / cfg.temperature).masked_fill(~off, -1e4)[keep]
                loss = loss + cfg.intra * 0.5 * _soft_ce(sim, ti)
    return loss
