"""Embeddings of a pair from a trained classifier: the vectors the index stores and queries use.

- `fused`: the pooled features the head sees (all encoders concatenated), L2-normalised.
- `s1` / `s2` (models with a separate encoder per modality): each modality's share of the class logits,
  `W[:, slice] @ features`. Both live in the same label space, which is what makes an S1 query against S2 vectors
  (cross-modal retrieval) meaningful without a second training objective.

A query may carry only some modalities: then only the vectors of the encoders it feeds are computed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from bigearth.data import groups_for

MODALITY_VECTORS = ("s1", "s2")


def encoder_groups(model: Any) -> dict[str, set[str]]:
    """Encoder name -> the batch groups it reads (`{"s1": {"s1"}, "s2": {"s2_10m", "s2_20m"}}`)."""
    return {name: set(groups_for(list(enc.stem.bands))) for name, enc in model.encoders.items()}


def vector_sizes(model: Any) -> dict[str, int]:
    sizes = {"fused": int(model.num_features)}
    for name in model.encoders:
        if name in MODALITY_VECTORS:
            sizes[name] = int(model.num_classes)
    return sizes


@torch.no_grad()
def embed(model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """(class probabilities or None, vectors) for a batch; probabilities and `fused` need every encoder's input."""
    present = set(batch)
    needs = encoder_groups(model)
    feats = {name: enc(batch).float() for name, enc in model.encoders.items() if needs[name] <= present}
    vectors: dict[str, torch.Tensor] = {}
    weight = model.head.weight.float()
    offset = 0
    for name, enc in model.encoders.items():
        if name in feats and name in MODALITY_VECTORS:
            vectors[name] = feats[name] @ weight[:, offset : offset + enc.num_features].T
        offset += enc.num_features
    probs = None
    if len(feats) == len(model.encoders):
        fused = torch.cat([feats[n] for n in model.encoders], dim=1)
        probs = torch.sigmoid(model.forward_head(fused).float())
        vectors["fused"] = F.normalize(fused, dim=1)
    return probs, vectors
