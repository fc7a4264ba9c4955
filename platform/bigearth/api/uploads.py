"""Turn an uploaded patch into model input, or say exactly what is wrong with it (a 4xx `ApiError` naming the
band or field and what was expected).

A patch arrives as band files exactly as in the archive (single-band GeoTIFFs named by band: a form field or file
name `B01`..`B12`, `B8A`, `VV`, `VH`, e.g. `S2A_..._B02.tif`), or as one `.npz` whose arrays are named by band
(`B02`, `VV`, ...) or by group (`s2_10m` `[4,120,120]`, ...). A band file is decoded only if it is a TIFF, by
`archive.geotiff.decode` (GDAL's GTiff driver at most, nothing but the uploaded bytes read).

Shared by the SDK (`bigearth.client`) and the service (`bigearth.serving.bodies` reads a request's body into these
functions, in a worker thread); nothing here imports the server.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from collections.abc import Iterable, Mapping

import numpy as np

from bigearth.api.schemas import ApiError
from bigearth.archive.geotiff import RasterError, decode
from bigearth.core.bands import BANDS, GROUPS

log = logging.getLogger("bigearth.serve")

_BAND_IN_NAME = re.compile(r"(?:^|[_\-.])(B0[1-9]|B1[0-2]|B8A|VV|VH)(?:\.tiff?)?$", re.IGNORECASE)


def band_of(*names: str | None) -> str | None:
    """The band a form field or file name stands for (`B8A`, `VV`, ...), or None."""
    for name in names:
        if not name:
            continue
        stem = name.rsplit("/", 1)[-1]
        if stem.upper() in BANDS:
            return stem.upper()
        m = _BAND_IN_NAME.search(stem)
        if m:
            return m.group(1).upper()
    return None


#: Limits checked before anything is decoded or inflated (decompression bombs within the body limit): the largest
#: legitimate `.npz` member is a group of one patch, `s1` or `s2_10m`: 115,328 bytes with its header.
NPZ_MAX_MEMBERS = 32
NPZ_MAX_MEMBER_BYTES = 1 << 20
NPZ_MAX_TOTAL_BYTES = 8 << 20


def _check_band(name: str, array: np.ndarray, where: str) -> np.ndarray:
    band = BANDS[name]
    if array.ndim != 2:
        raise ApiError(
            422,
            f"{where}: band {name} is a {array.ndim}-d array of shape {list(array.shape)}, expected 2-d "
            f"{band.shape[0]}x{band.shape[1]} ({band.gsd} m)",
            field=name,
        )
    if array.shape != band.shape:
        raise ApiError(
            422,
            f"{where}: band {name} is {array.shape[0]}x{array.shape[1]} pixels, "
            f"expected {band.shape[0]}x{band.shape[1]} ({band.gsd} m)",
            field=name,
        )
    if array.dtype.newbyteorder("=") != np.dtype(band.dtype):  # never cast: a float is not a DN, uint8 not dB
        kind = "Sentinel-2 digital numbers" if band.sensor == "s2" else "Sentinel-1 backscatter in dB"
        raise ApiError(
            422,
            f"{where}: band {name} has dtype {array.dtype}, expected {band.dtype} ({kind}, as in the archive)",
            field=name,
        )
    array = array.astype(band.dtype, copy=False)  # native byte order
    if band.sensor == "s1" and not np.isfinite(array).all():
        raise ApiError(422, f"{where}: band {name} holds NaN or infinite values", field=name)
    return array


def from_geotiffs(files: Iterable[tuple[str, str | None, bytes]]) -> dict[str, np.ndarray]:
    """`(form field, file name, bytes)` triples -> band name -> array, validated."""
    bands: dict[str, np.ndarray] = {}
    for field, filename, data in files:
        where = filename or field
        name = band_of(field, filename)
        if name is None:
            raise ApiError(
                422,
                f"{where}: cannot tell which band this file is; name the form field or the file by band "
                f"({', '.join(BANDS)})",
                field=field,
            )
        if name in bands:
            raise ApiError(422, f"{where}: band {name} given twice", field=name)
        if not data:
            raise ApiError(422, f"{where}: empty file for band {name}", field=name)
        band = BANDS[name]
        try:  # a TIFF or nothing; size and dtype from the header, before a pixel is decoded
            raster = decode(data, f"{where}: band {name}", expect=(band.shape, band.dtype))
        except RasterError as e:  # GDAL's words (internal paths) go to the log, never to the client
            if e.detail:
                log.info("upload refused: %s (GDAL: %s)", e, e.detail)
            raise ApiError(422, str(e), field=name) from None
        bands[name] = _check_band(name, raster.array, where)
    return bands


def from_npz(data: bytes, where: str = "upload.npz") -> dict[str, np.ndarray]:
    """An `.npz` of band arrays (`B02`: `[120,120]`) or group arrays (`s2_10m`: `[4,120,120]`) -> bands."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:  # sizes as the archive states them, before inflating
            members = z.infolist()
        if len(members) > NPZ_MAX_MEMBERS:
            raise ApiError(422, f"{where}: {len(members)} arrays, at most {NPZ_MAX_MEMBERS}", field="npz")
        for m in members:
            if m.file_size > NPZ_MAX_MEMBER_BYTES:
                raise ApiError(
                    413,
                    f"{where}: array {m.filename.removesuffix('.npy')!r} inflates to {m.file_size} bytes, "
                    f"more than one patch's ({NPZ_MAX_MEMBER_BYTES})",
                    field="npz",
                )
        if sum(m.file_size for m in members) > NPZ_MAX_TOTAL_BYTES:
            raise ApiError(413, f"{where}: inflates to more than {NPZ_MAX_TOTAL_BYTES} bytes", field="npz")
        npz = np.load(io.BytesIO(data), allow_pickle=False)
        arrays = {k: npz[k] for k in npz.files}
    except ApiError:
        raise
    except Exception as e:  # numpy's .npy header parser fails in open-ended ways (SyntaxError, ...) on bad bytes
        raise ApiError(422, f"{where}: not a readable .npz ({type(e).__name__}: {e})"[:500], field="npz") from None
    bands: dict[str, np.ndarray] = {}
    for key, arr in arrays.items():
        if not isinstance(arr, np.ndarray):  # numpy hands back the raw bytes of a member that is not an .npy
            raise ApiError(422, f"{where}: member {key!r} is not a NumPy array (.npy)", field=key)
        if key in GROUPS:
            names = GROUPS[key]
            arr = arr[0] if arr.ndim == 4 and arr.shape[0] == 1 else arr
            if arr.ndim != 3 or arr.shape[0] != len(names):
                raise ApiError(
                    422,
                    f"{where}: array {key!r} has shape {arr.shape}, expected [{len(names)}, H, W] "
                    f"for bands {list(names)}",
                    field=key,
                )
            for i, name in enumerate(names):
                bands[name] = _check_band(name, arr[i], where)
        elif key.upper() in BANDS:
            bands[key.upper()] = _check_band(key.upper(), arr, where)
        else:
            raise ApiError(
                422,
                f"{where}: unknown array {key!r}; expected band names ({', '.join(BANDS)}) or groups "
                f"({', '.join(GROUPS)})",
                field=key,
            )
    return bands


def assemble(bands: Mapping[str, np.ndarray], needed: Mapping[str, tuple[str, ...]]) -> dict[str, np.ndarray]:
    """Bands -> `{group: [1, C, H, W]}` for the groups `needed`; a missing band is an error naming it."""
    missing = [b for names in needed.values() for b in names if b not in bands]
    if missing:
        raise ApiError(
            422,
            f"missing band(s) {missing}: this request needs {[b for n in needed.values() for b in n]}",
            field="bands",
        )
    out = {}
    for group, names in needed.items():
        stacked = np.stack([bands[n] for n in names])[None]
        out[group] = stacked.astype(np.float32) if group == "s1" else stacked
    return out
