"""True-colour quicklooks of Sentinel-2 patches (B04/B03/B02 with a per-band percentile stretch) and land-cover
class maps in the 19 classes' colours, as PNG."""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np

from bigearth.core.bands import GROUPS

_RGB = [GROUPS["s2_10m"].index(b) for b in ("B04", "B03", "B02")]


def rgb(s2_10m: np.ndarray, low: float = 2.0, high: float = 98.0) -> np.ndarray:
    """`[4, H, W]` (B02, B03, B04, B08) reflectances -> `[H, W, 3]` uint8, each band stretched between its
    `low` and `high` percentiles (a flat band maps to mid-grey, not to noise)."""
    bands = np.asarray(s2_10m, dtype=np.float32)[_RGB]
    out = np.empty((*bands.shape[1:], 3), dtype=np.uint8)
    for i, band in enumerate(bands):
        lo, hi = np.percentile(band, [low, high])
        scaled = (band - lo) / (hi - lo) if hi > lo else np.full_like(band, 0.5)
        out[..., i] = np.clip(scaled * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def png(image: np.ndarray, scale: int = 1) -> bytes:
    """Encode an `[H, W, 3]` uint8 image as PNG, optionally enlarged by an integer factor (nearest)."""
    from PIL import Image

    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def rgb_png(batch: Mapping[str, np.ndarray], scale: int = 1) -> bytes:
    """PNG quicklook of one pair given as a batch dict (`s2_10m` of shape `[4, H, W]` or `[1, 4, H, W]`)."""
    arr = np.asarray(batch["s2_10m"])
    return png(rgb(arr[0] if arr.ndim == 4 else arr), scale)


# ------------------------------------------------------------------------------------------------ class maps
def _class_map(indices: np.ndarray, what: str) -> np.ndarray:
    """`indices` as a 2-D uint8 map, or a ValueError saying what was expected."""
    arr = np.asarray(indices)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{what}: expected a 2-D [H, W] map, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 class indices, got dtype {arr.dtype}")
    return arr


def _palette() -> bytes:
    """256 RGB entries: the 19 classes' colours, then IGNORE_COLOUR (index IGNORE_INDEX and every unused one)."""
    from bigearth.core.labels import BEN19_COLOURS, IGNORE_COLOUR

    colours = list(BEN19_COLOURS) + [IGNORE_COLOUR] * (256 - len(BEN19_COLOURS))
    return bytes(c for rgb in colours for c in rgb)


def class_map_png(indices: np.ndarray) -> bytes:
    """A map of 19-class indices (uint8 `[H, W]`) as a paletted PNG (colour type 3): class `i` in
    `BEN19_COLOURS[i]`, `IGNORE_INDEX` transparent (tRNS); any other index is an error naming it."""
    from PIL import Image

    from bigearth.core.labels import BEN19, IGNORE_INDEX

    arr = _class_map(indices, "class map")
    bad = np.unique(arr[(arr >= len(BEN19)) & (arr != IGNORE_INDEX)])
    if bad.size:
        raise ValueError(f"class map: index(es) {bad[:8].tolist()} are no class of the {len(BEN19)} nor {IGNORE_INDEX}")
    image = Image.fromarray(arr, mode="P")
    image.putpalette(_palette(), rawmode="RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG", transparency=IGNORE_INDEX, optimize=False)
    return buf.getvalue()


def reference_map_png(codes: np.ndarray, where: str = "reference map") -> bytes:
    """A reference map of CLC codes (uint16 `[H, W]`) as `class_map_png` of its 19-class targets (no data and the
    UNLABELED codes transparent; an unknown code raises `UnknownLabelError` naming it and `where`)."""
    from bigearth.core.labels import reference_targets

    arr = np.asarray(codes)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{where}: expected a 2-D [H, W] map of CLC codes, got shape {arr.shape}")
    if arr.dtype != np.uint16:
        raise ValueError(f"{where}: expected uint16 CLC codes, got dtype {arr.dtype}")
    return class_map_png(reference_targets(arr, where).astype(np.uint8, copy=False))


def area_shares(indices: np.ndarray) -> dict[str, float]:
    """Each 19-class class's share of the scored pixels of a class map (those not `IGNORE_INDEX`), in the
    nomenclature's order; all 0 when no pixel is scored."""
    from bigearth.core.labels import BEN19

    counts = np.bincount(_class_map(indices, "class map").ravel(), minlength=256)[: len(BEN19)]
    scored = int(counts.sum())
    return {n: (float(c) / scored if scored else 0.0) for n, c in zip(BEN19, counts, strict=True)}


def scored_pixels(indices: np.ndarray) -> int:
    """The pixels of a class map that hold a 19-class class (not `IGNORE_INDEX` nor any other index)."""
    from bigearth.core.labels import BEN19

    return int((_class_map(indices, "class map") < len(BEN19)).sum())


def legend(classes: tuple[str, ...] | list[str] = ()) -> list[dict[str, str]]:
    """`[{"name", "colour": "#rrggbb"}]` of the 19 classes (or of `classes`, 19-class names), in index order."""
    from bigearth.core.labels import BEN19, BEN19_COLOURS

    names = list(classes) or list(BEN19)
    return [{"name": n, "colour": "#{:02x}{:02x}{:02x}".format(*BEN19_COLOURS[BEN19.index(n)])} for n in names]
