"""InputStem: batch of native-size bands -> normalised model input, on whatever device the model runs.

Per-band normalisation with published or computed statistics, resampling of the 20 m and 60 m bands to the 10 m grid
(120 px; bilinear by default, `nearest` as the reBEN recipe), and band selection in a fixed channel order. Training,
evaluation and serving all call it, so their preprocessing cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bigearth.core.bands import BAND_SETS, GROUPS, STATS


def resolve_bands(bands: str | Sequence[str]) -> tuple[str, ...]:
    """A band-set name (`s1`, `s2-10`, `s2-12`, `s1s2-10`, `s1s2-12`) or an explicit band list."""
    if isinstance(bands, str):
        if bands not in BAND_SETS:
            raise ValueError(f"unknown band set {bands!r}; expected one of {sorted(BAND_SETS)} or a list of bands")
        return BAND_SETS[bands]
    known = {b for g in GROUPS.values() for b in g}
    unknown = [b for b in bands if b not in known]
    if unknown:
        raise ValueError(f"unknown band(s) {unknown}; expected names from {sorted(known)}")
    return tuple(bands)


class InputStem(nn.Module):
    """`forward(batch) -> float32 [B, len(bands), size, size]`, channels in the order of `bands`."""

    def __init__(
        self,
        bands: str | Sequence[str] = "s1s2-12",
        stats: str | Mapping[str, tuple[float, float]] = "v2",
        size: int = 120,
        mode: str = "bilinear",
    ) -> None:
        super().__init__()
        if mode not in ("nearest", "bilinear", "bicubic"):
            raise ValueError(f"unknown resampling {mode!r}; expected nearest, bilinear or bicubic")
        self.bands = resolve_bands(bands)
        table = STATS[stats] if isinstance(stats, str) else stats
        self.stats_name: str | None = stats if isinstance(stats, str) else None
        missing = [b for b in self.bands if b not in table]
        if missing:
            raise ValueError(f"no normalisation statistics for band(s) {missing}")
        self.size, self.mode = size, mode
        self.groups: list[tuple[str, list[int], list[int]]] = []  # (group, rows taken from it, output channels)
        for group, names in GROUPS.items():
            picked = [(names.index(b), self.bands.index(b)) for b in self.bands if b in names]
            if picked:
                self.groups.append((group, [p[0] for p in picked], [p[1] for p in picked]))
        mean = torch.tensor([table[b][0] for b in self.bands], dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor([table[b][1] for b in self.bands], dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        order = [c for _, _, channels in self.groups for c in channels]  # channel of each concatenated slice
        perm = torch.empty(len(order), dtype=torch.long)
        perm[torch.tensor(order)] = torch.arange(len(order))
        self.register_buffer("perm", perm, persistent=False)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.perm: torch.Tensor

    @property
    def in_chans(self) -> int:
        return len(self.bands)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        parts: list[torch.Tensor] = []
        for group, rows, _ in self.groups:
            if group not in batch:
                raise KeyError(f"batch has no {group!r} group, needed for band(s) {[GROUPS[group][r] for r in rows]}")
            x = batch[group].to(self.mean.device, non_blocking=True)
            # select and order the group's rows (a permutation of the whole group is a reordering too)
            x = x[:, rows].float() if rows != list(range(x.shape[1])) else x.float()
            if x.shape[-1] != self.size:
                corners = False if self.mode in ("bilinear", "bicubic") else None  # nearest takes no such option
                x = F.interpolate(x, size=(self.size, self.size), mode=self.mode, align_corners=corners)
            parts.append(x)
        x = torch.cat(parts, dim=1)[:, self.perm]
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"bands={list(self.bands)}, size={self.size}, mode={self.mode!r}"
