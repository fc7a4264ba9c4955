"""The baseline: a loader that reads the way torchgeo's BigEarthNet dataset does.

torchgeo (`torchgeo/datasets/bigearthnet.py`) opens every band file with rasterio for every sample, resamples it
bilinearly to 120 x 120 on read (`out_shape`, `Resampling.bilinear`), stacks the bands and serves one sample at a
time through a torch DataLoader. This reimplements that access pattern on our archive layouts, to compare against.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling

from bigearth.archive.layouts import ArchiveLayout
from bigearth.core import labels as lab

TORCHGEO_S2_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
TORCHGEO_S1_ORDER = ("VH", "VV")  # sorted(glob): the docstring says VV, VH


class TorchgeoStyleDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, layout: ArchiveLayout, rows: list[dict[str, Any]]) -> None:
        self.layout, self.rows = layout, rows

    def __len__(self) -> int:
        return len(self.rows)

    def _read(self, path: str) -> np.ndarray:
        with rasterio.open(path) as ds:
            return ds.read(indexes=1, out_shape=(120, 120), out_dtype="int32", resampling=Resampling.bilinear)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.rows[index]
        s1 = [self._read(self.layout.s1_band(row["s1_name"], b)) for b in TORCHGEO_S1_ORDER]
        s2 = [self._read(self.layout.s2_band(row["patch_id"], b)) for b in TORCHGEO_S2_ORDER]
        image = torch.from_numpy(np.stack(s1 + s2)).float()
        return {"image": image, "label": torch.from_numpy(lab.encode(row["labels"]))}
