"""True-colour quicklooks of Sentinel-2 patches: B04/B03/B02 with a per-band percentile stretch, as PNG."""

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
