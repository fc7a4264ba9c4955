"""GeoTIFF bytes <-> arrays for BigEarthNet bands.

`decode` is the one decoder of untrusted bytes (uploads to the service, members of a download): only a TIFF is
decoded (its magic bytes are checked first, so GDAL never sees VRT, WMS or other XML, PNG, HDF, ...), and tifffile
and GDAL only after `scan` has checked its first tag directory with `struct` (a bounded number of known tags, bounded
value bytes: both read every tag's value in full), in three tiers,
each bit-exact with GDAL (a test checks every real file): (1) `decode_layout` reads the IFD of the archive's own file
layout (the one `encode` writes byte for byte: classic little-endian TIFF, one band, uncompressed contiguous strips,
UTM `ProjectedCSTypeGeoKey`, tiepoint at pixel 0/0, square pixel scale) with `struct`, ~10 us a file; (2) any other
file tifffile can read with the same properties (another tag order, big-endian, BigTIFF), ~200 us; (3) everything
else, and every error, `decode_gdal`: rasterio with the GTiff driver alone on the in-memory file, with no directory
listing, sidecar (.aux.xml, .tfw, .ovr) or network access, checked to have read no other file (~1 ms). Why not
tifffile alone: its tag parsing in Python costs ~200 us a file, 2.8 ms a pair of 14 files, which caps an ingest at
about 350 pairs/s per core before any other work (measured 130); see docs/benchmarks.md. A `RasterError`'s message is
in this project's words (it may reach an HTTP client); GDAL's own text, which names internal paths, is only in its
`detail`, for logs and ingest reports. Every failure while decoding, whatever raised it, is a `RasterError`.
`encode` writes the archive's exact file layout (FACTS.md 1.3 / 2.3): single band, uncompressed, ~8 KiB strips,
little-endian, UTM GeoKeys, PixelIsArea, LONG strip arrays, optional `GDAL_NODATA` (v2 S2). Its output is
byte-identical to the real files for the same pixels and georeferencing, which the tests check against the real
patches.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
import tifffile
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile


class RasterError(ValueError):
    """A band file is missing, unreadable or not what the archive specifies. The message names the file and what was
    expected; `detail` holds GDAL's own words (server logs and ingest reports only, never an HTTP answer)."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class RasterMismatch(RasterError):
    """The header's size or dtype is not the `expect`ed one (found before any pixel is read): `what` is "shape" or
    "dtype", `found` the header's `(height, width)` or dtype name (the ingest's `wrong_shape` / `wrong_dtype`)."""

    def __init__(self, message: str, what: str, found: Any) -> None:
        super().__init__(message)
        self.what = what
        self.found = found


@dataclass(frozen=True)
class Raster:
    array: np.ndarray
    epsg: int | None
    ulx: float
    uly: float
    res: float
    nodata: float | None


#: The first four bytes of a TIFF: classic and BigTIFF, little- and big-endian (TIFF 6.0, BigTIFF).
TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")

#: What other files look like, to say what an upload is instead of a TIFF (the first match by prefix).
_NOT_TIFF = (
    (b"<", "XML, e.g. a GDAL VRT or WMS description"),
    (b"\xef\xbb\xbf<", "XML, e.g. a GDAL VRT or WMS description"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\x89HDF", "an HDF5 / NetCDF-4 file"),
    (b"\x0e\x03\x13\x01", "an HDF4 file"),
    (b"CDF", "a NetCDF file"),
    (b"ENVI", "an ENVI header"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip file"),
    (b"/vsi", "a GDAL virtual file name"),
)

#: GDAL's settings while it decodes bytes from outside: an in-memory file has no siblings, so no directory listing,
#: no .aux.xml (PAM), georeferencing from the file's own tags only (no .tfw / .tab / .prj sidecars), and no
#: /vsicurl/ request for any file name (no extension is allowed).
GDAL_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_PAM_ENABLED": "NO",
    "GDAL_GEOREF_SOURCES": "INTERNAL",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".bigearth-no-remote-files",
}

#: The most pixels one block (strip or tile) of a file may hold beyond its image: a 120x120 band whose header
#: claims one 32768x32768 tile makes GDAL allocate and inflate 2 GB for 14,400 pixels (measured 5.5 s).
MAX_BLOCK_PIXELS = 1 << 20

#: The most pixels any band file may have, whatever the caller expects (a band of the archive has 14,400): a 498-byte
#: sparse TIFF claiming 60000x60000 made GDAL allocate 6.7 GiB.
MAX_PIXELS = 1 << 22

#: Limits on the first image's tag directory, checked with `struct` before tifffile or GDAL parse it (both read every
#: tag's value in full: 4000 tags pointing at the same 2 MB of a 2 MB upload made libtiff allocate 8 GB). A band of
#: the archive has 15-17 tags, 166 bytes of values outside the directory, and 4 strips.
MAX_TAGS = 64
MAX_TAG_BYTES = 64 << 10
MAX_BLOCKS = 1 << 14

#: The tags a band file may carry: baseline and extension TIFF 6.0 tags, GeoTIFF's and GDAL's (metadata, nodata).
#: Anything else (EXIF or sub-IFDs, private tags) is refused before a decoder reads it.
ALLOWED_TAGS = frozenset(
    {254, 255, 256, 257, 258, 259, 262, 263, 264, 265, 266, 269, 270, 271, 272, 273, 274, 277, 278, 279, 280, 281}
    | {282, 283, 284, 285, 286, 287, 290, 291, 296, 297, 305, 306, 315, 316, 317, 318, 319, 320, 322, 323, 324}
    | {325, 338, 339, 340, 341, 347, 530, 531, 532, 33432}
    | {33550, 33922, 34264, 34735, 34736, 34737}  # GeoTIFF: pixel scale, tiepoint, transformation, GeoKeys
    | {42112, 42113}  # GDAL_METADATA, GDAL_NODATA
)
_BLOCK_ARRAYS = frozenset({273, 279, 324, 325})  # strip / tile offsets and byte counts
_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_KNOWN_TYPES = frozenset(_TYPE_BYTES)


def is_tiff(data: bytes) -> bool:
    """Whether `data` starts like a TIFF (classic or BigTIFF, either byte order)."""
    return data[:4] in TIFF_MAGIC


def _not_tiff(data: bytes, where: str) -> RasterError:
    head = data[:256].lstrip(b" \t\r\n")
    kind = next((what for prefix, what in _NOT_TIFF if head.startswith(prefix)), None)
    seen = f"it looks like {kind}" if kind else f"it starts with {data[:8]!r}"
    expected = "expected a single-band GeoTIFF as in the archive"
    return RasterError(f"{where}: not a readable GeoTIFF: not a TIFF file ({seen}); {expected}")


def _check(
    where: str, count: int, shape: tuple[int, int], dtype: str, expect: tuple[tuple[int, int], str] | None
) -> None:
    if count != 1:
        raise RasterError(f"{where}: expected 1 band, found {count}")
    if expect is not None:
        (height, width), want = expect
        if shape != (height, width):
            raise RasterMismatch(f"{where}: {shape[0]}x{shape[1]} pixels, expected {height}x{width}", "shape", shape)
        if dtype != want:
            raise RasterMismatch(f"{where}: dtype {dtype}, expected {want} (as in the archive)", "dtype", dtype)


def decode(data: bytes, where: str, expect: tuple[tuple[int, int], str] | None = None) -> Raster:
    """Decode one single-band GeoTIFF from untrusted bytes (see the module); `where` (the file's path, or an upload's
    file and band) goes into every error message. `expect` (`(height, width), dtype`): checked from the header
    before any pixel is read or inflated (an upload that claims 100,000 x 100,000 pixels is refused without
    allocating them). Every failure is a `RasterError`."""
    if not is_tiff(data):
        raise _not_tiff(data, where)
    try:
        # the archive's layout first: `decode_layout` reads at most 32 of its own tags of at most 256 values each
        # (within `scan`'s limits); anything else is scanned before tifffile or GDAL reads a value
        fast = decode_layout(data)
        if fast is None:
            next_at = scan(data, where)
            fast = _decode_fast(data)  # uncompressed: the pixels are a view of `data`, not inflated
        if fast is not None:
            _check(where, 1, fast.array.shape, fast.array.dtype.name, expect)
            return fast
    except RasterError:
        raise
    except Exception as e:  # the fast paths answer None for what they do not read; anything else is the file's
        raise RasterError(f"{where}: not a readable GeoTIFF", detail=f"{type(e).__name__}: {e}"[:600]) from None
    return _decode_gdal(_first_image(data, next_at), where, expect)


def decode_gdal(data: bytes, where: str, expect: tuple[tuple[int, int], str] | None = None) -> Raster:
    """`decode`'s last tier: any TIFF GDAL's GTiff driver reads, and the error of every file that is damaged. Only
    the GTiff driver, only the in-memory file (checked: GDAL lists no other file it used), only its first image
    (the next-image pointer is cleared), only after `scan`, `GDAL_OPTIONS`; at most `MAX_PIXELS`."""
    if not is_tiff(data):
        raise _not_tiff(data, where)
    return _decode_gdal(_first_image(data, scan(data, where)), where, expect)


def _decode_gdal(data: bytes, where: str, expect: tuple[tuple[int, int], str] | None) -> Raster:
    mem = MemoryFile(data)
    try:
        with rasterio.Env(**GDAL_OPTIONS), mem, mem.open(driver="GTiff") as ds:
            if ds.files != [mem.name]:
                raise RasterError(
                    f"{where}: refers to other files; expected a self-contained GeoTIFF as in the archive",
                    detail=f"GDAL lists {len(ds.files)} files for it",
                )
            _check(where, ds.count, (ds.height, ds.width), ds.dtypes[0], expect)
            if ds.height * ds.width > MAX_PIXELS:
                raise RasterError(
                    f"{where}: {ds.height}x{ds.width} pixels; expected a band of at most {MAX_PIXELS} pixels"
                )
            block_h, block_w = ds.block_shapes[0]
            if block_h * block_w > max(ds.height * ds.width, MAX_BLOCK_PIXELS):
                raise RasterError(
                    f"{where}: blocks of {block_h}x{block_w} pixels for a {ds.height}x{ds.width} image; "
                    f"expected strips or tiles of at most {MAX_BLOCK_PIXELS} pixels"
                )
            array = ds.read(1)
            t = ds.transform
            epsg = ds.crs.to_epsg() if ds.crs else None
            return Raster(array, epsg, t.c, t.f, t.a, ds.nodata)
    except RasterError:
        raise
    except Exception as e:  # GDAL's errors, and rasterio's on what it parses itself (a crafted GeoKey citation:
        # UnicodeDecodeError, CRSError): the file's fault, never a 500 or a dead ingest task
        words = _gdal_words(e, mem.name, where)
        detail = words if isinstance(e, RasterioError) else f"{type(e).__name__}: {words}"
        raise RasterError(f"{where}: not a readable GeoTIFF", detail=detail) from None


def scan(data: bytes, where: str) -> int:
    """Check the first image's tag directory of a TIFF with `struct` (classic and BigTIFF, either byte order)
    before tifffile or GDAL read it: at most `MAX_TAGS` tags, all in `ALLOWED_TAGS`, at most `MAX_TAG_BYTES` of
    values outside the directory besides the strip / tile arrays, which hold at most `MAX_BLOCKS` entries each.
    Returns where the next-image pointer is (only the first image is decoded); a `RasterError` otherwise."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\0", b"\0+")
    head, size, fmt, inline = (8, 20, "HHQ8x", 8) if big else (2, 12, "HHI4x", 4)
    try:
        (ifd,) = struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)
        if ifd + head > len(data):  # (a BigTIFF offset may be past what `struct` takes: OverflowError)
            raise struct.error("the directory is past the end")
        (n,) = struct.unpack_from(order + ("Q" if big else "H"), data, ifd)
    except struct.error:
        raise RasterError(
            f"{where}: not a readable GeoTIFF", detail="the header or image directory is cut short"
        ) from None
    if n > MAX_TAGS:
        raise RasterError(f"{where}: not a readable GeoTIFF: {n} TIFF tags, expected at most {MAX_TAGS}")
    next_at = ifd + head + n * size
    if next_at + inline > len(data):
        raise RasterError(f"{where}: not a readable GeoTIFF", detail=f"the directory of {n} tags is cut short")
    entries = struct.unpack_from(order + fmt * n, data, ifd + head)
    tags, types, counts = entries[0::3], entries[1::3], entries[2::3]
    if not ALLOWED_TAGS.issuperset(tags):
        raise RasterError(
            f"{where}: not a readable GeoTIFF: TIFF tag {min(set(tags) - ALLOWED_TAGS)} is not one of a GeoTIFF band "
            "(baseline TIFF, GeoTIFF and GDAL tags only)"
        )
    if not _KNOWN_TYPES.issuperset(types):
        raise RasterError(f"{where}: not a readable GeoTIFF", detail=f"unknown TIFF field types {sorted(types)}")
    sizes = [count * _TYPE_BYTES[typ] for typ, count in zip(types, counts, strict=True)]
    outside = sum(size for tag, size in zip(tags, sizes, strict=True) if size > inline and tag not in _BLOCK_ARRAYS)
    blocks = max((count for tag, count in zip(tags, counts, strict=True) if tag in _BLOCK_ARRAYS), default=0)
    if blocks > MAX_BLOCKS:
        raise RasterError(f"{where}: not a readable GeoTIFF: {blocks} strips or tiles, expected at most {MAX_BLOCKS}")
    if outside > MAX_TAG_BYTES:
        raise RasterError(
            f"{where}: not a readable GeoTIFF: {outside} bytes of tag values, expected at most {MAX_TAG_BYTES}"
        )
    return next_at


def _first_image(data: bytes, next_at: int) -> bytes:
    """`data` with the next-image pointer at `next_at` cleared (a copy if it was set): GDAL reads only the first
    image, never overviews, masks or other pages of a file it has not been checked on."""
    width = 8 if data[2:4] in (b"+\0", b"\0+") else 4
    if not any(data[next_at : next_at + width]):
        return data
    return data[:next_at] + bytes(width) + data[next_at + width :]


def _gdal_words(e: BaseException, name: str, where: str) -> str:
    """GDAL's messages for one failure (rasterio chains them: "Read failed" <- the block <- libtiff's reason), with
    the in-memory file's name replaced by `where`."""
    words: list[str] = []
    cause: BaseException | None = e
    while cause is not None and len(words) < 8:
        text = str(cause).replace(name, where).replace(name.rsplit("/", 1)[-1], where)
        if text not in words:
            words.append(text)
        cause = cause.__cause__ or cause.__context__
    return "; ".join(words)


# TIFF tags and GeoKeys the fast path reads (TIFF 6.0, GeoTIFF 1.1, GDAL).
_SCALE, _TIEPOINT, _TRANSFORM, _GEOKEYS, _GDAL_NODATA = 33550, 33922, 34264, 34735, 42113
_RASTER_TYPE, _PROJECTED_CRS = 1025, 3072
_PIXEL_IS_AREA, _USER_DEFINED = 1, 32767


def _geokeys(values: tuple[int, ...]) -> dict[int, int]:
    """Inline (SHORT) GeoKeys of a GeoKeyDirectoryTag: key -> value."""
    n = values[3] if len(values) >= 4 else 0
    out = {}
    for i in range(4, 4 + 4 * n, 4):
        key, location, count, value = values[i : i + 4]
        if location == 0 and count == 1:
            out[key] = value
    return out


def _georeferenced(
    array: np.ndarray, keys: dict[int, int], scale: Any, tie: Any, nodata: str | bytes | None
) -> Raster | None:
    """The Raster of a fast path, or None unless its georeferencing is the archive's kind: a WGS 84 / UTM EPSG
    code, PixelIsArea, a tiepoint at pixel 0/0 and a square pixel scale (what rasterio reports the same way)."""
    epsg = keys.get(_PROJECTED_CRS)
    if (
        epsg is None
        or epsg == _USER_DEFINED
        or keys.get(_RASTER_TYPE, _PIXEL_IS_AREA) != _PIXEL_IS_AREA
        or scale is None
        or tie is None
        or len(tie) != 6
        or tie[0] != 0
        or tie[1] != 0
        or scale[0] != scale[1]
    ):
        return None
    text = nodata.decode("ascii") if isinstance(nodata, bytes) else nodata
    return Raster(
        array.astype(array.dtype.newbyteorder("="), copy=False),
        int(epsg),
        float(tie[3]),
        float(tie[4]),
        float(scale[0]),
        float(text.strip("\0 ")) if text is not None else None,
    )


def decode_fast(data: bytes) -> Raster | None:
    """The archive's kind of GeoTIFF decoded with tifffile, bit-exact with `decode_gdal`; None when the file is of
    another kind (compressed, tiled, several bands, a rotation, PixelIsPoint, no EPSG code), does not parse, or is
    beyond `scan`'s limits (checked before tifffile reads it)."""
    try:
        scan(data, "")
    except RasterError:
        return None
    return _decode_fast(data)


def _decode_fast(data: bytes) -> Raster | None:
    try:
        with tifffile.TiffFile(io.BytesIO(data), _useframes=False) as tif:
            page = tif.pages.first
            if _next_ifd(data, tif.tiff, page.offset) != 0:  # a second image (not `len(pages)`: it walks them all)
                return None
            tags = page.tags
            if (
                page.samplesperpixel != 1
                or page.compression != 1
                or page.is_tiled
                or page.dtype is None
                or page.dtype.name not in _TYPES
                or not page.is_contiguous
                or _TRANSFORM in tags
            ):
                return None
            offset, nbytes = page.dataoffsets[0], sum(page.databytecounts)
            height, width = page.shape
            dtype = np.dtype(page.dtype).newbyteorder(tif.byteorder)
            if nbytes != height * width * dtype.itemsize or offset + nbytes > len(data):
                return None
            array = np.frombuffer(data, dtype=dtype, count=height * width, offset=offset).reshape(height, width)
            return _georeferenced(
                array,
                _geokeys(tuple(tags.valueof(_GEOKEYS, ()))),
                tags.valueof(_SCALE),
                tags.valueof(_TIEPOINT),
                tags.valueof(_GDAL_NODATA),
            )
    except Exception:
        return None


def _next_ifd(data: bytes, tiff: Any, ifd: int) -> int:
    """The offset of the image after the one whose IFD is at `ifd` (0: none), in tifffile's `TiffFormat`."""
    (n,) = struct.unpack_from(tiff.tagnoformat, data, ifd)
    (offset,) = struct.unpack_from(tiff.offsetformat, data, ifd + tiff.tagnosize + n * tiff.tagsize)
    return int(offset)


_LAYOUT_DTYPES: dict[tuple[int, int], np.dtype[Any]] = {(16, 1): np.dtype("<u2"), (32, 3): np.dtype("<f4")}
_FIELD = {3: ("H", 2), 4: ("I", 4), 12: ("d", 8), 2: ("s", 1)}  # TIFF type -> struct code, size
_LAYOUT_TYPES = frozenset(_FIELD)


def _values(data: bytes, typ: int, count: int, raw_at: int) -> tuple[Any, ...] | bytes:
    code, size = _FIELD[typ]  # KeyError: a type the layout does not use
    at = raw_at if count * size <= 4 else struct.unpack_from("<I", data, raw_at)[0]
    if at + count * size > len(data):
        raise ValueError("tag value outside the file")
    if typ == 2:
        return data[at : at + count]
    return struct.unpack_from(f"<{count}{code}", data, at)


#: The tags of the archive's file layout (`encode`'s); a file with any other is not read by `decode_layout`.
_LAYOUT_TAGS = frozenset({256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 339, 33550, 33922, 34735, 34737, 42113})
_LAYOUT_MAX_TAGS = 32
_LAYOUT_MAX_COUNT = 256  # values of one tag (GeoKeys: 32, tiepoint: 6, strips: at most 120), within `scan`'s limits


def decode_layout(data: bytes) -> Raster | None:
    """The archive's exact file layout read with `struct`; None for anything that deviates from it. At most 32 of
    the layout's own tags of at most 256 values each (within `scan`'s limits, so `decode` needs no scan first);
    only the values of the tags it uses are read (the strip arrays: at most one entry per row)."""
    try:
        if data[:4] != b"II*\0":
            return None
        (ifd,) = struct.unpack_from("<I", data, 4)
        (n,) = struct.unpack_from("<H", data, ifd)
        if n > _LAYOUT_MAX_TAGS:
            return None
        raw = struct.unpack_from("<" + "HHI4x" * n, data, ifd + 2)
        fields = {raw[k]: (raw[k + 1], raw[k + 2], ifd + 10 + 4 * k) for k in range(0, 3 * n, 3)}
        if (
            not fields.keys() <= _LAYOUT_TAGS
            or len(fields) != n
            or not _LAYOUT_TYPES.issuperset(raw[1::3])
            or max(raw[2::3], default=0) > _LAYOUT_MAX_COUNT
        ):
            return None
        if struct.unpack_from("<I", data, ifd + 2 + 12 * n)[0] != 0:  # a second image
            return None

        def value(tag: int, limit: int = _LAYOUT_MAX_COUNT) -> Any:
            field = fields.get(tag)
            if field is None:
                return None
            typ, count, at = field
            if count > limit:
                raise ValueError(f"tag {tag}: {count} values")
            return _values(data, typ, count, at)

        width, height = value(256, 1)[0], value(257, 1)[0]
        bits, fmt = value(258, 1)[0], (value(339, 1) or (1,))[0]
        dtype = _LAYOUT_DTYPES.get((bits, fmt))
        if (
            dtype is None
            or (value(259, 1) or (1,))[0] != 1  # compression
            or (value(277, 1) or (1,))[0] != 1  # samples per pixel
            or (value(284, 1) or (1,))[0] != 1  # planar configuration
        ):
            return None
        offsets, counts = value(273, height), value(279, height)
        nbytes = int(width) * int(height) * dtype.itemsize
        if len(offsets) != len(counts) or sum(counts) != nbytes:
            return None
        for i in range(1, len(offsets)):
            if offsets[i] != offsets[i - 1] + counts[i - 1]:
                return None
        start = int(offsets[0])
        if start + nbytes > len(data):
            return None
        array = np.frombuffer(data, dtype=dtype, count=nbytes // dtype.itemsize, offset=start)
        return _georeferenced(
            array.reshape(int(height), int(width)),
            _geokeys(tuple(value(_GEOKEYS) or ())),
            value(_SCALE),
            value(_TIEPOINT),
            value(_GDAL_NODATA),
        )
    except (KeyError, IndexError, TypeError, ValueError, struct.error):
        return None


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


def encode_reference_map(array: np.ndarray, epsg: int, ulx: float, uly: float) -> bytes:
    """A v2 reference map as the archive stores it (FACTS.md 2.3): uint16 CLC codes, DEFLATE with the horizontal
    predictor, strips of 34 rows, nodata 0, on the 10 m grid of the patch (through GDAL)."""
    if array.shape != (120, 120) or array.dtype != np.uint16:
        raise ValueError(f"expected a 120x120 uint16 array, got {array.dtype} {array.shape}")
    profile = {
        "driver": "GTiff",
        "dtype": "uint16",
        "width": 120,
        "height": 120,
        "count": 1,
        "crs": f"EPSG:{epsg}",
        "transform": rasterio.Affine(10.0, 0.0, ulx, 0.0, -10.0, uly),
        "nodata": 0,
        "compress": "deflate",
        "predictor": 2,
        "blockysize": 34,
    }
    with MemoryFile() as mem:
        with mem.open(**profile) as ds:
            ds.write(array, 1)
        return bytes(mem.read())
