"""The upload parsers against hostile input: every case a 4xx `ApiError` naming the band or field and what was
expected, decided before anything large is decoded or inflated; never a silent cast, never an exception of
another kind (a 500)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import rasterio
from rasterio.io import MemoryFile

from bigearth.api import ApiError
from bigearth.archive.geotiff import encode
from bigearth.serving.inputs import NPZ_MAX_MEMBER_BYTES, from_geotiffs, from_npz


def _tiff(array: np.ndarray) -> bytes:
    if array.dtype.name in ("uint16", "float32"):  # the archive's own file layout
        return encode(array, epsg=32633, ulx=404400.0, uly=5342400.0, res=10.0)
    with MemoryFile() as mem:  # any other dtype: a GeoTIFF as GDAL writes it
        h, w = array.shape
        with mem.open(driver="GTiff", width=w, height=h, count=1, dtype=array.dtype.name) as ds:
            ds.write(array[None])
        return bytes(mem.read())


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _raises(call, status: int, field: str, *words: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as e:
        call()
    assert e.value.status == status and e.value.field == field, (e.value.status, e.value.field, str(e.value))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_good_bands_pass_unchanged() -> None:
    vv = np.full((120, 120), -12.5, np.float32)
    b02 = np.arange(120 * 120, dtype=np.uint16).reshape(120, 120)
    bands = from_geotiffs([("VV", "x_VV.tif", _tiff(vv)), ("B02", "x_B02.tif", _tiff(b02))])
    assert bands["VV"].dtype == np.float32 and np.array_equal(bands["B02"], b02)
    bands = from_npz(_npz(VV=vv, B02=b02.astype(">u2")))  # another byte order of the right dtype is fine
    assert bands["B02"].dtype == np.dtype("uint16") and np.array_equal(bands["B02"], b02)


@pytest.mark.parametrize(
    ("band", "dtype"),
    [("VV", "uint8"), ("VH", "int16"), ("VV", "float64"), ("B02", "float32"), ("B02", "uint8"), ("B05", "int32")],
)
def test_a_band_of_another_dtype_is_refused_not_cast(band: str, dtype: str) -> None:
    size = 60 if band == "B05" else 120
    array = np.ones((size, size), dtype=dtype)
    expected = "float32" if band in ("VV", "VH") else "uint16"
    _raises(lambda: from_npz(_npz(**{band: array})), 422, band, f"dtype {dtype}", f"expected {expected}")
    data = _tiff(array)
    _raises(lambda: from_geotiffs([(band, f"x_{band}.tif", data)]), 422, band, dtype, expected)


@pytest.mark.parametrize(
    "array",
    [np.float32(3.0), np.zeros((120,), np.float32), np.zeros((1, 1, 120, 120), np.float32)],
    ids=["0-d", "1-d", "4-d"],
)
def test_arrays_of_the_wrong_rank_are_named(array: np.ndarray) -> None:
    _raises(lambda: from_npz(_npz(VV=array)), 422, "VV", f"{array.ndim}-d array", "expected 2-d 120x120")
    _raises(lambda: from_npz(_npz(s1=np.float32(1))), 422, "s1", "expected [2, H, W]")


def test_an_npz_bomb_is_refused_before_it_inflates() -> None:
    bomb = _npz(VV=np.zeros((4096, 4096), np.float32))  # 64 MiB of zeros in a ~65 KiB body
    assert len(bomb) < 200_000
    _raises(lambda: from_npz(bomb), 413, "npz", "'VV' inflates to", str(NPZ_MAX_MEMBER_BYTES))
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as z:
        for i in range(40):
            z.writestr(f"a{i}.npy", b"")
    _raises(lambda: from_npz(many.getvalue()), 422, "npz", "40 arrays")


def test_a_geotiff_bomb_is_refused_from_its_header() -> None:
    buf = io.BytesIO()
    profile = {"driver": "GTiff", "width": 30000, "height": 30000, "count": 1, "dtype": "uint16"}
    with MemoryFile() as mem:
        with mem.open(**profile, compress="deflate", tiled=True, sparse_ok=True) as ds:
            ds.write(np.zeros((1, 16, 16), np.uint16), window=rasterio.windows.Window(0, 0, 16, 16))
        buf.write(mem.read())
    data = buf.getvalue()
    assert len(data) < 5_000_000  # 1.8 GB of pixels, claimed by a small file
    _raises(lambda: from_geotiffs([("B02", "x_B02.tif", data)]), 422, "B02", "30000x30000 pixels", "expected 120x120")
