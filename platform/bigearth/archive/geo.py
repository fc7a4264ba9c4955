"""Where a patch lies: its centre in WGS84 from the UTM upper-left corner and EPSG code its GeoTIFFs carry
(FACTS.md: 120 px at 10 m, so 1,200 m a side)."""

from __future__ import annotations

import numpy as np

PATCH_SIZE_M = 1200.0  # 120 px at 10 m


def centres_lonlat(epsg: np.ndarray, ulx: np.ndarray, uly: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Patch centres (from the UTM upper-left corners) as WGS84 longitude, latitude."""
    from rasterio.crs import CRS
    from rasterio.warp import transform

    lon = np.full(len(epsg), np.nan)
    lat = np.full(len(epsg), np.nan)
    for code in np.unique(epsg):
        sel = np.flatnonzero(epsg == code)
        xs, ys = transform(
            CRS.from_epsg(int(code)),
            CRS.from_epsg(4326),
            (ulx[sel] + PATCH_SIZE_M / 2).tolist(),
            (uly[sel] - PATCH_SIZE_M / 2).tolist(),
        )
        lon[sel], lat[sel] = xs, ys
    return lon, lat
