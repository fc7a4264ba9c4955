"""GeoTIFF encode/decode: the encoder reproduces every real file byte for byte; decode errors name the file."""

from __future__ import annotations

import numpy as np
import pytest

from bigearth.archive import geotiff
from helpers import REAL_V1, REAL_V2

pytestmark = pytest.mark.real


def _real_tifs() -> list:  # type: ignore[type-arg]
    files = sorted(REAL_V1.rglob("*.tif")) + sorted((REAL_V2 / "BigEarthNet-S2").rglob("*.tif"))
    return files + sorted((REAL_V2 / "BigEarthNet-S1").rglob("*.tif"))


def test_encode_reproduces_every_real_file() -> None:
    files = _real_tifs()
    assert len(files) == 120  # 6x14 v1 pairs + 3x2 extra S1 + 2x12 v2 S2 + 3x2 v2 S1
    for path in files:
        real = path.read_bytes()
        r = geotiff.decode(real, str(path))
        v2_s2 = r.nodata is not None
        again = geotiff.encode(
            r.array, r.epsg, r.ulx, r.uly, r.res, nodata=0 if v2_s2 else None, short_strip_counts=v2_s2
        )
        assert again == real, path


def test_real_file_sizes_match_facts() -> None:
    sizes = {p.name.rsplit("_", 1)[1]: p.stat().st_size for p in sorted(REAL_V1.rglob("*.tif"))}
    assert sizes["B02.tif"] == 29_192 and sizes["B05.tif"] == 7_560 and sizes["B01.tif"] == 1_160
    assert sizes["VV.tif"] == 58_024
    v2 = {p.name.rsplit("_", 1)[1]: p.stat().st_size for p in (REAL_V2 / "BigEarthNet-S2").rglob("*.tif")}
    assert (v2["B02.tif"], v2["B05.tif"], v2["B01.tif"]) == (29_196, 7_572, 1_172)


def test_decode_errors_name_the_file() -> None:
    with pytest.raises(geotiff.RasterError, match=r"/x/y_B02.tif: not a readable GeoTIFF"):
        geotiff.decode(b"not a tiff at all", "/x/y_B02.tif")
    good = geotiff.encode(np.ones((20, 20), np.uint16), 32633, 0, 0, 60)
    with pytest.raises(geotiff.RasterError, match=r"truncated\.tif"):
        geotiff.decode(good[:100], "truncated.tif")


def test_encode_rejects_what_the_archive_never_holds() -> None:
    with pytest.raises(ValueError, match="uint16 or float32"):
        geotiff.encode(np.ones((4, 4), np.int32), 32633, 0, 0, 10)
    with pytest.raises(ValueError, match="326xx"):
        geotiff.encode(np.ones((4, 4), np.uint16), 4326, 0, 0, 10)


@pytest.mark.parametrize("fast", [geotiff.decode_layout, geotiff.decode_fast])
def test_fast_paths_are_bit_exact_with_rasterio_on_every_real_file(fast) -> None:  # type: ignore[no-untyped-def]
    for path in _real_tifs():
        data = path.read_bytes()
        got, ref = fast(data), geotiff.decode(data, str(path))
        assert got is not None, path  # every band file of the archive takes the fast path
        assert got.array.dtype == ref.array.dtype and got.array.shape == ref.array.shape, path
        assert np.array_equal(got.array, ref.array), path
        assert (got.epsg, got.ulx, got.uly, got.res, got.nodata) == (ref.epsg, ref.ulx, ref.uly, ref.res, ref.nodata)


def test_files_of_another_kind_fall_back_to_rasterio(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import rasterio
    from rasterio.transform import from_origin

    ref_map = next((REAL_V2 / "Reference_Maps").rglob("*.tif"))  # DEFLATE + predictor: not the fast paths' kind
    data = ref_map.read_bytes()
    assert geotiff.decode_layout(data) is None and geotiff.decode_fast(data) is None
    assert geotiff.decode_archive(data, str(ref_map)).array.shape == (120, 120)
    # big-endian: not the archive's layout, but tifffile reads it; PixelIsPoint: only rasterio gets the corner right
    array = np.arange(400, dtype=np.uint16).reshape(20, 20)
    with rasterio.MemoryFile() as mem:
        profile = {"driver": "GTiff", "width": 20, "height": 20, "count": 1, "dtype": "uint16", "crs": "EPSG:32633"}
        with mem.open(**profile, transform=from_origin(1000.0, 2000.0, 60, 60), ENDIANNESS="BIG") as ds:
            ds.write(array, 1)
        big = mem.read()
    assert geotiff.decode_layout(big) is None
    fast = geotiff.decode_fast(big)
    assert (
        fast is not None and np.array_equal(fast.array, array) and (fast.epsg, fast.ulx, fast.res) == (32633, 1000, 60)
    )
    point = bytearray(geotiff.encode(array, 32633, 1000.0, 2000.0, 60))
    at = bytes(point).index(bytes([0x01, 0x04, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00]))  # GTRasterTypeGeoKey = Area
    point[at + 6] = 2  # PixelIsPoint
    assert geotiff.decode_layout(bytes(point)) is None and geotiff.decode_fast(bytes(point)) is None
    r = geotiff.decode_archive(bytes(point), "point.tif")
    assert r.ulx == 1000.0 - 30  # GDAL shifts a PixelIsPoint tiepoint by half a pixel


def test_fast_path_errors_stay_rasterio_s() -> None:
    good = geotiff.encode(np.ones((20, 20), np.uint16), 32633, 0, 0, 60)
    for bad in (b"not a tiff at all", good[:100], good[:-50]):
        with pytest.raises(geotiff.RasterError, match=r"x_B01\.tif: not a readable GeoTIFF"):
            geotiff.decode_archive(bad, "x_B01.tif")
