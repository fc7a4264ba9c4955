"""Augmentation of a training batch, on whatever device the batch is on (the loader delivers it there).

`flips`: each pair is flipped left-right with probability 0.5 and, independently, top-bottom with probability 0.5
(the reBEN recipe). The S1 and S2 groups of one pair, and its reference map's `mask` (segmentation), always flip
together. The flags come from a seeded CPU
generator (one per worker and epoch), so a run is reproducible; the flips themselves run on the device.

The groups are flipped at their native size, before the stem resamples them: upsampling to 120 px by the archive's
integer ratios (20 m and 60 m bands: 2x, 6x) commutes with a flip for nearest and bilinear resampling, so this is
the same as flipping the resampled input. (Downsampling, e.g. the tiny model's 60 px, picks other pixels of a
flipped patch: still a flip of the patch, one pixel off the flipped resampled one.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from bigearth.core.bands import GROUPS

AUGMENTATIONS = ("none", "flips")


def random_flips(batch: Mapping[str, Any], generator: torch.Generator) -> dict[str, Any]:
    """A new batch with every band group of each pair, and its `mask`, flipped as that pair's two coin tosses say."""
    groups = [g for g in (*GROUPS, "mask") if g in batch]
    if not groups:
        return dict(batch)
    n = len(batch[groups[0]])
    flags = torch.rand((2, n), generator=generator) < 0.5  # [left-right, top-bottom] per pair
    out = dict(batch)
    for g in groups:
        x = batch[g]
        shape = (-1,) + (1,) * (x.dim() - 1)  # [B, C, H, W] groups, the [B, H, W] mask
        h, v = (f.to(x.device, non_blocking=True).view(shape) for f in flags)
        x = torch.where(h, x.flip(-1), x)
        out[g] = torch.where(v, x.flip(-2), x)
    return out


def augmenter(name: str, seed: int) -> Any:
    """`batch -> batch` for a config's `data.augment` (None for `none`)."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {name!r}; expected one of {list(AUGMENTATIONS)}")
    if name == "none":
        return None
    gen = torch.Generator().manual_seed(seed)
    return lambda batch: random_flips(batch, gen)
