"""Band names, native sizes, dtypes, groups and published normalisation statistics (FACTS.md 1.3, 4.4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Band:
    """One raster band of a BigEarthNet pair at its native size."""

    name: str
    sensor: Literal["s1", "s2"]
    gsd: int  # metres per pixel
    size: int  # pixels per side
    dtype: str  # numpy dtype name, little-endian on disk

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    @property
    def nbytes(self) -> int:
        return self.size * self.size * np.dtype(self.dtype).itemsize


def _s2(name: str, gsd: int) -> Band:
    return Band(name, "s2", gsd, {10: 120, 20: 60, 60: 20}[gsd], "uint16")


#: The 12 Sentinel-2 bands (no B10) in the platform's canonical order (torchgeo's: B8A after B08).
S2_BANDS: tuple[Band, ...] = (
    _s2("B01", 60),
    _s2("B02", 10),
    _s2("B03", 10),
    _s2("B04", 10),
    _s2("B05", 20),
    _s2("B06", 20),
    _s2("B07", 20),
    _s2("B08", 10),
    _s2("B8A", 20),
    _s2("B09", 60),
    _s2("B11", 20),
    _s2("B12", 20),
)
#: The 2 Sentinel-1 polarisations, VV first (the order of the official v2 checkpoints).
S1_BANDS: tuple[Band, ...] = (Band("VV", "s1", 10, 120, "float32"), Band("VH", "s1", 10, 120, "float32"))
ALL_BANDS: tuple[Band, ...] = S2_BANDS + S1_BANDS
BANDS: dict[str, Band] = {b.name: b for b in ALL_BANDS}
S2_BAND_NAMES: tuple[str, ...] = tuple(b.name for b in S2_BANDS)
S1_BAND_NAMES: tuple[str, ...] = tuple(b.name for b in S1_BANDS)

#: Batch groups of the training input: each group is one array `[B, len(group), size, size]`.
GROUPS: dict[str, tuple[str, ...]] = {
    "s1": ("VV", "VH"),
    "s2_10m": ("B02", "B03", "B04", "B08"),
    "s2_20m": ("B05", "B06", "B07", "B8A", "B11", "B12"),
    "s2_60m": ("B01", "B09"),
}

#: Channel selections understood by the input stem and the data pipeline.
BAND_SETS: dict[str, tuple[str, ...]] = {
    "s1": S1_BAND_NAMES,
    # official v2 checkpoint order (v0.2.0): 10 m and 20 m bands, no B01/B09
    "s2-10": ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"),
    "s2-12": S2_BAND_NAMES,
}
BAND_SETS["s1s2-10"] = BAND_SETS["s1"] + BAND_SETS["s2-10"]
BAND_SETS["s1s2-12"] = BAND_SETS["s1"] + BAND_SETS["s2-12"]

#: Published per-band mean / std (DN for S2, dB for S1).
#: "v2": ConfigILM BENv2_utils `no_interpolation` (official v2 train split; S1 from v1), at native resolution.
#: "v2-120-nearest" / "v2-120-bilinear": the same file's tables after resampling every band to 120 px that way
#: (`120_nearest` equals `no_interpolation`: nearest upsampling by 2x / 6x repeats pixels; the reBEN recipe).
#: "v1": bigearthnet_common BAND_STATS_S2/S1 (the BigEarthNet-MM models).
STATS: dict[str, dict[str, tuple[float, float]]] = {
    "v2": {
        "B01": (361.0767822265625, 575.0687255859375),
        "B02": (438.3720703125, 607.02685546875),
        "B03": (614.0556640625, 603.2968139648438),
        "B04": (588.4096069335938, 684.56884765625),
        "B05": (942.8433227539062, 738.4326782226562),
        "B06": (1769.931640625, 1100.4560546875),
        "B07": (2049.551513671875, 1275.805419921875),
        "B08": (2193.2919921875, 1369.3717041015625),
        "B8A": (2235.556640625, 1356.5440673828125),
        "B09": (2241.455322265625, 1316.393310546875),
        "B11": (1568.226806640625, 1070.1612548828125),
        "B12": (997.7324829101562, 813.5276489257812),
        "VH": (-19.352558135986328, 5.590505599975586),
        "VV": (-12.643863677978516, 5.133493900299072),
    },
    "v1": {
        "B01": (340.76769064, 554.81258967),
        "B02": (429.9430203, 572.41639287),
        "B03": (614.21682446, 582.87945694),
        "B04": (590.23569706, 675.88746967),
        "B05": (950.68368468, 729.89827633),
        "B06": (1792.46290469, 1096.01480586),
        "B07": (2075.46795189, 1273.45393088),
        "B08": (2218.94553375, 1365.45589904),
        "B8A": (2266.46036911, 1356.13789355),
        "B09": (2246.0605464, 1302.3292881),
        "B11": (1594.42694882, 1079.19066363),
        "B12": (1009.32729131, 818.86747235),
        "VV": (-12.619993741972035, 5.115911777546365),
        "VH": (-19.29044597721542, 5.464428464912864),
    },
}

STATS["v2-120-nearest"] = dict(STATS["v2"])
STATS["v2-120-bilinear"] = {
    "B01": (360.64678955078125, 563.1734008789062),
    "B02": (438.3720703125, 607.02685546875),
    "B03": (614.0556640625, 603.2968139648438),
    "B04": (588.4096069335938, 684.56884765625),
    "B05": (942.7476806640625, 727.5784301757812),
    "B06": (1769.8486328125, 1087.4288330078125),
    "B07": (2049.475830078125, 1261.4302978515625),
    "B08": (2193.2919921875, 1369.3717041015625),
    "B8A": (2235.48681640625, 1342.490478515625),
    "B09": (2241.10595703125, 1294.35546875),
    "B11": (1568.2115478515625, 1063.9197998046875),
    "B12": (997.715087890625, 806.8846435546875),
    "VH": (-19.352558135986328, 5.590505599975586),
    "VV": (-12.643863677978516, 5.133493900299072),
}
