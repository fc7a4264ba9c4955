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
