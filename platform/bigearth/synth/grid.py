"""Sentinel-2 MGRS tiles -> UTM georeferencing of their 1200 m patches (FACTS.md 1.2: h = column, v = row)."""

from __future__ import annotations

PATCH_M = 1200
_BANDS = "CDEFGHJKLMNPQRSTUVWX"  # latitude bands, 8 degrees each from 80 S
_COLUMNS = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")
_ROWS = "ABCDEFGHJKLMNPQRSTUV"
_M_PER_DEG = 110_800  # meridian metres per degree, close enough to pick the right 2,000 km cycle


def tile_origin(tile: str) -> tuple[int, float, float]:
    """EPSG code and upper-left corner (easting, northing) of an S2 tile such as `33UUP` (northern hemisphere)."""
    zone, band, col, row = int(tile[:2]), tile[2], tile[3], tile[4]
    easting = (_COLUMNS[(zone - 1) % 3].index(col) + 1) * 100_000
    row_offset = 0 if zone % 2 else 5
    northing_mod = ((_ROWS.index(row) - row_offset) % 20) * 100_000
    band_min_northing = (-80 + 8 * _BANDS.index(band)) * _M_PER_DEG
    south = northing_mod
    while south + 100_000 <= band_min_northing:
        south += 2_000_000
    return 32600 + zone, float(easting), float(south + 100_000)


def patch_corner(tile: str, h: int, v: int) -> tuple[int, float, float]:
    """EPSG and upper-left corner of patch `h_v` of `tile`."""
    epsg, x0, y0 = tile_origin(tile)
    return epsg, x0 + h * PATCH_M, y0 - v * PATCH_M


def projection_wkt(epsg: int) -> str:
    """The WKT the v1 JSON files carry in `projection`."""
    zone = epsg - 32600
    return (
        f'PROJCS["WGS 84 / UTM zone {zone}N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,'
        '298.257223563,AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY["EPSG",'
        '"8901"]],UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],AXIS["Latitude",NORTH],AXIS['
        '"Longitude",EAST],AUTHORITY["EPSG","4326"]],PROJECTION["Transverse_Mercator"],PARAMETER['
        f'"latitude_of_origin",0],PARAMETER["central_meridian",{zone * 6 - 183}],PARAMETER["scale_factor",0.9996],'
        'PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1,AUTHORITY["EPSG","9001"]],'
        f'AXIS["Easting",EAST],AXIS["Northing",NORTH],AUTHORITY["EPSG","{epsg}"]]'
    )
