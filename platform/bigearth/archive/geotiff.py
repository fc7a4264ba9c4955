"""GeoTIFF bytes <-> arrays for BigEarthNet bands.

`decode` reads with rasterio from bytes (GDAL's in-memory files), so any valid GeoTIFF decodes. `encode` writes the
archive's exact file layout (FACTS.md 1.3 / 2.3): single band, uncompressed, ~8 KiB strips, little-endian, UTM
GeoKeys, PixelIsArea, LONG strip arrays, optional `GDAL_NODATA` (v2 S2). Its output is byte-identical to the real
files for the same pixels and georeferencing, which the tests check against the real patches.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile


class RasterError(ValueError):
    """A band file is missing, unreadable or not what the archive specifies."""


@dataclass(frozen=True)
class Raster:
    array: np.ndarray
    epsg: int | None
    ulx: float
    uly: float
    res: float
    nodata: float | None


def decode(data: bytes, where: str) -> Raster:
    """Decode one single-band GeoTIFF; `where` (the file's path) goes into every error message."""
    try:
        with MemoryFile(data) as mem, mem.open() as ds:
            if ds.count != 1:
                raise RasterError(f"{where}: expected 1 band, found {ds.count}")
            array = ds.read(1)
            t = ds.transform
            epsg = ds.crs.to_epsg() if ds.crs else None
            return Raster(array, epsg, t.c, t.f, t.a, ds.nodata)
    except RasterioError as e:
        raise RasterError(f"{where}: not a readable GeoTIFF ({e})") from None


_TYPES = {"uint16": (1, 16), "float32": (3, 32)}  # SampleFormat, BitsPerSample
_SHORT, _LONG, _ASCII, _DOUBLE = 3, 4, 2, 12


def encode(
    array: np.ndarray,
    epsg: int,
    ulx: float,
    uly: float,
    res: float,
    nodata: int | None = None,
    short_strip_counts: bool = False,
) -> bytes:
    """Encode one band exactly as the archive stores it (UTM north zones, EPSG 326xx).

    v1 files and v2 S1 files store the strip byte counts as LONG; v2 S2 files (a newer GDAL) as SHORT, and carry
    `nodata=0`.
    """
    if array.ndim != 2 or array.dtype.name not in _TYPES:
        raise ValueError(f"expected a 2-D uint16 or float32 array, got {array.dtype} {array.shape}")
    if not 32601 <= epsg <= 32660:
        raise ValueError(f"expected a WGS 84 / UTM north EPSG code (326xx), got {epsg}")
    height, width = array.shape
    sample_format, bits = _TYPES[array.dtype.name]
    row_bytes = width * bits // 8
    rows_per_strip = min(height, max(1, 8192 // row_bytes))  # GDAL's default strip height
    n_strips = -(-height // rows_per_strip)
    counts = [min(rows_per_strip, height - i * rows_per_strip) * row_bytes for i in range(n_strips)]
    citation = f"WGS 84 / UTM zone {epsg - 32600}N|WGS 84|\0".encode()
    geokeys = (
        1,
        1,
        0,
        7,
        1024,
        0,
        1,
        1,
        1025,
        0,
        1,
        1,
        1026,
        34737,
        len(citation) - 8,
        0,
        2049,
        34737,
        7,
        len(citation) - 8,
        2054,
        0,
        1,
        9102,
        3072,
        0,
        1,
        epsg,
        3076,
        0,
        1,
        9001,
    )
    nodata_str = f"{nodata}\0".encode() if nodata is not None else None

    n_entries = 15 + (nodata_str is not None)
    offset = 8 + 2 + 12 * n_entries + 4  # first byte after the IFD: out-of-line values follow in GDAL's order
    extra = bytearray()

    def place(payload: bytes) -> int:
        nonlocal extra
        pos = offset + len(extra)
        extra += payload
        return pos

    # GDAL writes the strip byte counts first, then the offsets, then the GeoTIFF tags.
    counts_fmt, counts_type = ("H", _SHORT) if short_strip_counts and n_strips > 1 else ("I", _LONG)
    counts_pos = place(struct.pack(f"<{n_strips}{counts_fmt}", *counts)) if n_strips > 1 else counts[0]
    offsets_pos = place(b"\0" * 4 * n_strips) if n_strips > 1 else 0
    scale_pos = place(struct.pack("<3d", res, res, 0.0))
    tie_pos = place(struct.pack("<6d", 0.0, 0.0, 0.0, float(ulx), float(uly), 0.0))
    keys_pos = place(struct.pack(f"<{len(geokeys)}H", *geokeys))
    ascii_pos = place(citation)
    nodata_val = 0
    if nodata_str is not None:
        if len(nodata_str) <= 4:
            nodata_val = int.from_bytes(nodata_str.ljust(4, b"\0"), "little")
        else:
            nodata_val = place(nodata_str)
    data_start = offset + len(extra)
    strip_offsets = [data_start + sum(counts[:i]) for i in range(n_strips)]
    if n_strips > 1:
        extra[offsets_pos - offset : offsets_pos - offset + 4 * n_strips] = struct.pack(f"<{n_strips}I", *strip_offsets)
        first_offset = offsets_pos
    else:
        first_offset = strip_offsets[0]

    entries = [
        (256, _SHORT, 1, width),
        (257, _SHORT, 1, height),
        (258, _SHORT, 1, bits),
        (259, _SHORT, 1, 1),
        (262, _SHORT, 1, 1),
        (273, _LONG, n_strips, first_offset),
        (277, _SHORT, 1, 1),
        (278, _SHORT, 1, rows_per_strip),
        (279, counts_type, n_strips, counts_pos),
        (284, _SHORT, 1, 1),
        (339, _SHORT, 1, sample_format),
        (33550, _DOUBLE, 3, scale_pos),
        (33922, _DOUBLE, 6, tie_pos),
        (34735, _SHORT, len(geokeys), keys_pos),
        (34737, _ASCII, len(citation), ascii_pos),
    ]
    if nodata_str is not None:
        entries.append((42113, _ASCII, len(nodata_str), nodata_val))
    ifd = bytearray(struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        if typ == _SHORT and count == 1:
            ifd += struct.pack("<HHIHH", tag, typ, count, value, 0)
        else:
            ifd += struct.pack("<HHII", tag, typ, count, value)
    ifd += b"\0\0\0\0"
    pixels = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return b"II*\0" + struct.pack("<I", 8) + bytes(ifd) + bytes(extra) + pixels


def read_file(path: str) -> Raster:
    """Convenience for tests and tools: decode a local GeoTIFF."""
    with rasterio.open(path) as ds:
        t = ds.transform
        return Raster(ds.read(1), ds.crs.to_epsg() if ds.crs else None, t.c, t.f, t.a, ds.nodata)
