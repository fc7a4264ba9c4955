"""CORINE land-cover nomenclatures of BigEarthNet: 43 CLC Level-3 classes, the 19-class one, conversions.

The index orders are the OFFICIAL ones (`label_indices.json` of the BigEarthNet models), not the lexicographic
order some libraries use. See FACTS.md section 3.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np

Nomenclature = Literal[19, 43]

BEN43: tuple[str, ...] = (
    "Continuous urban fabric",
    "Discontinuous urban fabric",
    "Industrial or commercial units",
    "Road and rail networks and associated land",
    "Port areas",
    "Airports",
    "Mineral extraction sites",
    "Dump sites",
    "Construction sites",
    "Green urban areas",
    "Sport and leisure facilities",
    "Non-irrigated arable land",
    "Permanently irrigated land",
    "Rice fields",
    "Vineyards",
    "Fruit trees and berry plantations",
    "Olive groves",
    "Pastures",
    "Annual crops associated with permanent crops",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland",
    "Moors and heathland",
    "Sclerophyllous vegetation",
    "Transitional woodland/shrub",
    "Beaches, dunes, sands",
    "Bare rock",
    "Sparsely vegetated areas",
    "Burnt areas",
    "Inland marshes",
    "Peatbogs",
    "Salt marshes",
    "Salines",
    "Intertidal flats",
    "Water courses",
    "Water bodies",
    "Coastal lagoons",
    "Estuaries",
    "Sea and ocean",
)

BEN19: tuple[str, ...] = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)

#: `label_indices.json` "label_conversion": BEN19 index -> the BEN43 indices merged into it.
LABEL_CONVERSION: tuple[tuple[int, ...], ...] = (
    (0, 1),
    (2,),
    (11, 12, 13),
    (14, 15, 16, 18),
    (17,),
    (19,),
    (20,),
    (21,),
    (22,),
    (23,),
    (24,),
    (25, 31),
    (26, 27),
    (28,),
    (29,),
    (33, 34),
    (35, 36),
    (38, 39),
    (40, 41, 42),
)

#: BEN43 index -> BEN19 index; the 11 dropped classes are absent.
LABEL_CONVERTER: dict[int, int] = {i43: i19 for i19, members in enumerate(LABEL_CONVERSION) for i43 in members}

#: BEN43 indices with no 19-class equivalent.
DROPPED_43: tuple[int, ...] = tuple(i for i in range(len(BEN43)) if i not in LABEL_CONVERTER)

_CLC_CODES_19: dict[str, tuple[int, ...]] = {
    "Urban fabric": (111, 112),
    "Industrial or commercial units": (121,),
    "Arable land": (211, 212, 213),
    "Permanent crops": (221, 222, 223, 241),
    "Pastures": (231,),
    "Complex cultivation patterns": (242,),
    "Land principally occupied by agriculture, with significant areas of natural vegetation": (243,),
    "Agro-forestry areas": (244,),
    "Broad-leaved forest": (311,),
    "Coniferous forest": (312,),
    "Mixed forest": (313,),
    "Natural grassland and sparsely vegetated areas": (321, 333),
    "Moors, heathland and sclerophyllous vegetation": (322, 323),
    "Transitional woodland, shrub": (324,),
    "Beaches, dunes, sands": (331,),
    "Inland wetlands": (411, 412),
    "Coastal wetlands": (421, 422),
    "Inland waters": (511, 512),
    "Marine waters": (521, 522, 523),
}

#: BEN19 index -> a CLC code of that class (the first listed), for synthetic reference maps.
CLC_CODE_OF_19: tuple[int, ...] = tuple(_CLC_CODES_19[name][0] for name in BEN19)

#: v2 reference-map CLC codes (pipeline `clc_metadata.json`) -> BEN19 index.
CLC_CODE_TO_19: dict[int, int] = {code: BEN19.index(name) for name, codes in _CLC_CODES_19.items() for code in codes}

#: CLC codes that form the UNLABELED class of the v2 reference maps.
CLC_UNLABELED: tuple[int, ...] = (122, 123, 124, 131, 132, 133, 141, 142, 332, 334, 335, 423, 999)

_INDEX = {19: {n: i for i, n in enumerate(BEN19)}, 43: {n: i for i, n in enumerate(BEN43)}}
_NAMES = {19: BEN19, 43: BEN43}


class UnknownLabelError(ValueError):
    """A label name is not part of the requested nomenclature."""


def class_names(nomenclature: Nomenclature = 19) -> tuple[str, ...]:
    """Class names of a nomenclature in official index order."""
    return _NAMES[nomenclature]


def label_index(name: str, nomenclature: Nomenclature = 19) -> int:
    """Official index of a class name; raises `UnknownLabelError` naming the label and nomenclature."""
    try:
        return _INDEX[nomenclature][name]
    except KeyError:
        raise UnknownLabelError(f"unknown {nomenclature}-class label {name!r}") from None


def convert_43_to_19(names: Iterable[str]) -> list[str]:
    """Map 43-class names to the sorted-by-index, de-duplicated 19-class names; dropped classes vanish."""
    out = {LABEL_CONVERTER[i] for i in (label_index(n, 43) for n in names) if i in LABEL_CONVERTER}
    return [BEN19[i] for i in sorted(out)]


def clc_codes_to_19(codes: Iterable[int]) -> list[str]:
    """Map v2 reference-map CLC codes to 19-class names; UNLABELED codes vanish, unknown codes raise."""
    out = set()
    for code in codes:
        code = int(code)
        if code in CLC_CODE_TO_19:
            out.add(CLC_CODE_TO_19[code])
        elif code not in CLC_UNLABELED:
            raise UnknownLabelError(f"unknown CLC code {code}")
    return [BEN19[i] for i in sorted(out)]


def encode(names: Iterable[str], nomenclature: Nomenclature = 19) -> np.ndarray:
    """Multi-hot float32 vector of length 19 or 43 in official order."""
    vec = np.zeros(len(_NAMES[nomenclature]), dtype=np.float32)
    for n in names:
        vec[label_index(n, nomenclature)] = 1.0
    return vec


def encode_many(rows: Sequence[Sequence[str]], nomenclature: Nomenclature = 19) -> np.ndarray:
    """Multi-hot float32 matrix `[len(rows), 19|43]`."""
    out = np.zeros((len(rows), len(_NAMES[nomenclature])), dtype=np.float32)
    index = _INDEX[nomenclature]
    for r, names in enumerate(rows):
        for n in names:
            try:
                out[r, index[n]] = 1.0
            except KeyError:
                raise UnknownLabelError(f"unknown {nomenclature}-class label {n!r} in row {r}") from None
    return out


def decode(vector: Sequence[float] | np.ndarray, nomenclature: Nomenclature = 19, threshold: float = 0.5) -> list[str]:
    """Names whose entry is above `threshold` (as the metrics), in official order."""
    arr = np.asarray(vector)
    names = _NAMES[nomenclature]
    if arr.shape != (len(names),):
        raise ValueError(f"expected a vector of {len(names)} entries, got shape {arr.shape}")
    return [names[i] for i in np.flatnonzero(arr > threshold)]


# ---------------------------------------------------------------------------------------------- per pixel (maps)
#: The target of a reference-map pixel with no 19-class class (code 0 = no data, the UNLABELED codes): ignored by
#: the segmentation loss and metrics.
IGNORE_INDEX = 255
#: The largest CLC code (999: UNLABELED "no data" of the CLC product).
_MAX_CODE = 999
#: Every code a reference map may hold: 0 (GDAL_NODATA), the 19-class ones and the UNLABELED ones.
_KNOWN_CODES = frozenset({0, *CLC_CODE_TO_19, *CLC_UNLABELED})


def _code_lut() -> np.ndarray:
    lut = np.full(_MAX_CODE + 1, IGNORE_INDEX, np.uint8)
    for code, i in CLC_CODE_TO_19.items():
        lut[code] = i
    return lut


#: CLC code -> 19-class index (IGNORE_INDEX for 0 and the UNLABELED codes): the per-pixel form of `CLC_CODE_TO_19`.
CLC_LUT_19: np.ndarray = _code_lut()
CLC_LUT_19.setflags(write=False)
#: The entry of `CLC_LUT_U16` for a value that is no CLC code of the archive (never a class index or IGNORE_INDEX).
UNKNOWN_CODE = 254


def _u16_lut() -> np.ndarray:
    lut = np.full(2**16, UNKNOWN_CODE, np.uint8)
    for code in _KNOWN_CODES:
        lut[code] = CLC_LUT_19[code]
    return lut


#: `CLC_LUT_19` over every uint16 value (the reference maps' dtype), `UNKNOWN_CODE` for a value that is no code of
#: the archive: one gather of the maps as they are, no clipping, no intp copy.
CLC_LUT_U16: np.ndarray = _u16_lut()
CLC_LUT_U16.setflags(write=False)


def reference_targets(codes: np.ndarray, where: str = "reference map") -> np.ndarray:
    """Per-pixel 19-class targets (uint8, `IGNORE_INDEX` where the code has no 19-class class) of reference-map
    CLC codes of any shape; a code that is no CLC code of the archive raises `UnknownLabelError` naming it and
    `where` (the patch). Unsigned codes of up to 16 bits (the maps') go through `CLC_LUT_U16` as they are; the
    checked path below only runs for other dtypes or to name an unknown code."""
    arr = np.asarray(codes)
    if arr.dtype.kind not in "iu":
        raise UnknownLabelError(f"{where}: expected integer CLC codes, got dtype {arr.dtype}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize <= 2:  # the maps' uint16: one table look-up, checked after
        fast = CLC_LUT_U16[arr]
        if not (fast == UNKNOWN_CODE).any():
            return fast
    clipped = np.clip(arr, 0, _MAX_CODE).astype(np.intp, copy=False)
    bad = (arr < 0) | (arr > _MAX_CODE)
    targets = CLC_LUT_19[clipped]
    suspect = bad | ((targets == IGNORE_INDEX) & (arr != 0))
    if suspect.any():
        unknown = sorted({int(c) for c in np.unique(arr[suspect])} - _KNOWN_CODES)
        if unknown:
            raise UnknownLabelError(
                f"{where}: unknown CLC code(s) {unknown[:8]}; a reference map holds 0 (no data), the codes of the "
                f"19 classes and the UNLABELED codes {list(CLC_UNLABELED)}"
            )
    return targets


#: The colour (RGB) of each 19-class class in maps and legends: the CORINE Land Cover colour of its first CLC code
#: (Marine waters: 523, Sea and ocean, the one it mostly is).
BEN19_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 0, 77),  # 111 Urban fabric
    (204, 77, 242),  # 121 Industrial or commercial units
    (255, 255, 168),  # 211 Arable land
    (230, 128, 0),  # 221 Permanent crops
    (230, 230, 77),  # 231 Pastures
    (255, 230, 77),  # 242 Complex cultivation patterns
    (230, 204, 77),  # 243 Agriculture with natural vegetation
    (242, 204, 166),  # 244 Agro-forestry areas
    (128, 255, 0),  # 311 Broad-leaved forest
    (0, 166, 0),  # 312 Coniferous forest
    (77, 255, 0),  # 313 Mixed forest
    (204, 242, 77),  # 321 Natural grassland and sparsely vegetated areas
    (166, 255, 128),  # 322 Moors, heathland and sclerophyllous vegetation
    (166, 242, 0),  # 324 Transitional woodland, shrub
    (230, 230, 230),  # 331 Beaches, dunes, sands
    (166, 166, 255),  # 411 Inland wetlands
    (204, 204, 255),  # 421 Coastal wetlands
    (0, 204, 242),  # 511 Inland waters
    (230, 242, 255),  # 523 Marine waters
)
#: The colour of ignored pixels (no data, UNLABELED) in maps.
IGNORE_COLOUR: tuple[int, int, int] = (0, 0, 0)
