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
