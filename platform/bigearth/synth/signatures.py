"""Per-class spectral (S2, DN = reflectance x 10000) and backscatter (S1, dB) signatures, and label statistics.

Signatures are typical values for each land-cover type; neighbouring classes (the agricultural ones, the forest
ones) are deliberately close so that a model has to use several bands and the radar to tell them apart.
Frequencies are the real v2 class counts and labels-per-patch histogram (FACTS.md 2.4).
"""

from __future__ import annotations

import numpy as np

from bigearth.core.labels import BEN19

# Band order: B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12 (bigearth.core.bands.S2_BANDS)
_S2 = {
    "Urban fabric": [1200, 1100, 1050, 1100, 1300, 1500, 1600, 1700, 1750, 1600, 2200, 1900],
    "Industrial or commercial units": [1400, 1300, 1300, 1400, 1500, 1650, 1750, 1850, 1900, 1700, 2500, 2300],
    "Arable land": [600, 500, 750, 800, 1200, 2000, 2400, 2600, 2700, 2500, 2300, 1500],
    "Permanent crops": [500, 450, 700, 650, 1100, 2100, 2500, 2700, 2800, 2600, 2100, 1300],
    "Pastures": [400, 350, 650, 450, 1000, 2500, 3000, 3300, 3400, 3200, 2000, 1050],
    "Complex cultivation patterns": [550, 480, 720, 650, 1150, 2200, 2600, 2850, 2950, 2750, 2200, 1350],
    BEN19[6]: [450, 400, 650, 550, 1050, 2300, 2750, 3000, 3100, 2900, 2000, 1150],
    "Agro-forestry areas": [420, 380, 600, 500, 950, 2200, 2600, 2850, 2950, 2800, 1900, 1050],
    "Broad-leaved forest": [300, 250, 450, 280, 700, 2400, 3000, 3300, 3400, 3200, 1600, 750],
    "Coniferous forest": [250, 200, 350, 200, 500, 1400, 1700, 1900, 2000, 1900, 950, 450],
    "Mixed forest": [270, 220, 400, 240, 600, 1900, 2350, 2600, 2700, 2550, 1250, 600],
    "Natural grassland and sparsely vegetated areas": [
        600,
        550,
        800,
        850,
        1250,
        1900,
        2200,
        2400,
        2500,
        2300,
        2600,
        1900,
    ],
    "Moors, heathland and sclerophyllous vegetation": [
        450,
        400,
        600,
        550,
        950,
        1600,
        1850,
        2000,
        2100,
        1950,
        1900,
        1200,
    ],
    "Transitional woodland, shrub": [350, 300, 500, 400, 800, 1900, 2300, 2550, 2650, 2500, 1700, 900],
    "Beaches, dunes, sands": [1500, 1600, 1800, 2000, 2200, 2300, 2400, 2500, 2550, 2400, 2800, 2500],
    "Inland wetlands": [350, 320, 480, 400, 700, 1300, 1550, 1700, 1750, 1650, 1200, 700],
    "Coastal wetlands": [450, 420, 600, 520, 800, 1200, 1400, 1500, 1550, 1450, 1300, 900],
    "Inland waters": [350, 350, 450, 300, 280, 250, 230, 200, 190, 180, 120, 90],
    "Marine waters": [300, 330, 420, 250, 220, 180, 160, 140, 130, 120, 80, 60],
}
# (VV, VH) in dB
_S1 = {
    "Urban fabric": (-2.0, -9.0),
    "Industrial or commercial units": (-3.0, -10.0),
    "Arable land": (-10.0, -17.0),
    "Permanent crops": (-9.0, -16.0),
    "Pastures": (-11.0, -18.0),
    "Complex cultivation patterns": (-10.0, -16.5),
    BEN19[6]: (-9.5, -16.0),
    "Agro-forestry areas": (-8.5, -15.0),
    "Broad-leaved forest": (-7.5, -13.0),
    "Coniferous forest": (-7.0, -12.5),
    "Mixed forest": (-7.2, -12.8),
    BEN19[11]: (-12.0, -19.0),
    BEN19[12]: (-11.0, -17.5),
    "Transitional woodland, shrub": (-8.5, -14.5),
    "Beaches, dunes, sands": (-16.0, -24.0),
    "Inland wetlands": (-13.0, -20.0),
    "Coastal wetlands": (-14.0, -21.0),
    "Inland waters": (-20.0, -27.0),
    "Marine waters": (-19.0, -26.0),
}

# A fixed per-class, per-band perturbation (+-12 %) so that neighbouring classes differ in more than one band.
_FINGERPRINT = np.random.default_rng(1234).uniform(-0.12, 0.12, size=(len(BEN19), 12))
S2_SIGNATURES = (np.array([_S2[n] for n in BEN19], dtype=np.float64) * (1 + _FINGERPRINT)).astype(np.float32)
S1_SIGNATURES = np.array([_S1[n] for n in BEN19], dtype=np.float32)  # [19, 2]
SNOW = np.array([9000, 9500, 9300, 9200, 9000, 8800, 8600, 8500, 8300, 8000, 900, 700], dtype=np.float32)
CLOUD = np.array([6000, 6200, 6100, 6000, 6100, 6200, 6200, 6300, 6300, 5000, 5200, 4200], dtype=np.float32)

#: Patches containing each class in the real v2 metadata (all splits), in BEN19 order.
CLASS_COUNTS = np.array(
    [
        63758,
        11142,
        188025,
        29588,
        95605,
        99598,
        122709,
        33181,
        135928,
        154941,
        165780,
        11882,
        13894,
        141150,
        1316,
        20919,
        1397,
        63212,
        61832,
    ],
    dtype=np.float64,
)
#: Labels-per-patch histogram of the real v2 metadata: {n_labels: patches}.
LABELS_PER_PATCH = {1: 86375, 2: 94649, 3: 135885, 4: 102036, 5: 45329, 6: 12963, 7: 2478, 8: 302, 9: 15, 10: 1, 11: 5}


def sample_labels(rng: np.random.Generator) -> list[int]:
    """BEN19 indices for one patch, following the real labels-per-patch and class frequencies."""
    counts = np.array(list(LABELS_PER_PATCH.values()), dtype=np.float64)
    n = int(rng.choice(list(LABELS_PER_PATCH), p=counts / counts.sum()))
    p = CLASS_COUNTS / CLASS_COUNTS.sum()
    return sorted(int(i) for i in rng.choice(len(BEN19), size=n, replace=False, p=p))
