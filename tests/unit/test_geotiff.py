"""GeoTIFF encode/decode: the encoder reproduces every real file byte for byte; decode errors name the file; only a
self-contained TIFF is decoded, by GDAL's GTiff driver at most, and GDAL's own words stay out of the message."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
import tifffile

from bigearth.archive import geotiff
from helpers import REAL_V1, REAL_V2, TIFF_FORMATS, TIFF_IMAGE, craft_tiff


def _real_tifs() -> list:  # type: ignore[type-arg]
    files = sorted(REAL_V1.rglob("*.tif")) + sorted((REAL_V2 / "BigEarthNet-S2").rglob("*.tif"))
    return files + sorted((REAL_V2 / "BigEarthNet-S1").rglob("*.tif"))


@pytest.mark.real
def test_encode_reproduces_every_real_file() -> None:
    files = _real_tifs()
    assert len(files) == 120  # 6x14 v1 pairs + 3x2 extra S1 + 2x12 v2 S2 + 3x2 v2 S1
    for path in files:
        real = path.read_bytes()
        r = geotiff.decode_gdal(real, str(path))
        v2_s2 = r.nodata is not None
        again = geotiff.encode(
            r.array, r.epsg, r.ulx, r.uly, r.res, nodata=0 if v2_s2 else None, short_strip_counts=v2_s2
        )
        assert again == real, path


@pytest.mark.real
def test_real_file_sizes_match_facts() -> None:
    sizes = {p.name.rsplit("_", 1)[1]: p.stat().st_size for p in sorted(REAL_V1.rglob("*.tif"))}
    assert sizes["B02.tif"] == 29_192 and sizes["B05.tif"] == 7_560 and sizes["B01.tif"] == 1_160
    assert sizes["VV.tif"] == 58_024
    v2 = {p.name.rsplit("_", 1)[1]: p.stat().st_size for p in (REAL_V2 / "BigEarthNet-S2").rglob("*.tif")}
    assert (v2["B02.tif"], v2["B05.tif"], v2["B01.tif"]) == (29_196, 7_572, 1_172)


def test_decode_errors_name_the_file() -> None:
    with pytest.raises(geotiff.RasterError, match=r"/x/y_B02.tif: not a readable GeoTIFF: not a TIFF file"):
        geotiff.decode(b"not a tiff at all", "/x/y_B02.tif")
    good = geotiff.encode(np.ones((20, 20), np.uint16), 32633, 0, 0, 60)
    with pytest.raises(geotiff.RasterError, match=r"truncated\.tif"):
        geotiff.decode(good[:100], "truncated.tif")


def test_encode_rejects_what_the_archive_never_holds() -> None:
    with pytest.raises(ValueError, match="uint16 or float32"):
        geotiff.encode(np.ones((4, 4), np.int32), 32633, 0, 0, 10)
    with pytest.raises(ValueError, match="326xx"):
        geotiff.encode(np.ones((4, 4), np.uint16), 4326, 0, 0, 10)


@pytest.mark.real
@pytest.mark.parametrize("fast", [geotiff.decode_layout, geotiff.decode_fast])
def test_fast_paths_are_bit_exact_with_rasterio_on_every_real_file(fast) -> None:  # type: ignore[no-untyped-def]
    for path in _real_tifs():
        data = path.read_bytes()
        got, ref = fast(data), geotiff.decode_gdal(data, str(path))
        assert got is not None, path  # every band file of the archive takes the fast path
        assert got.array.dtype == ref.array.dtype and got.array.shape == ref.array.shape, path
        assert np.array_equal(got.array, ref.array), path
        assert (got.epsg, got.ulx, got.uly, got.res, got.nodata) == (ref.epsg, ref.ulx, ref.uly, ref.res, ref.nodata)


@pytest.mark.real
def test_files_of_another_kind_fall_back_to_rasterio(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import rasterio
    from rasterio.transform import from_origin

    ref_map = next((REAL_V2 / "Reference_Maps").rglob("*.tif"))  # DEFLATE + predictor: not the fast paths' kind
    data = ref_map.read_bytes()
    assert geotiff.decode_layout(data) is None and geotiff.decode_fast(data) is None
    assert geotiff.decode(data, str(ref_map)).array.shape == (120, 120)
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
    r = geotiff.decode(bytes(point), "point.tif")
    assert r.ulx == 1000.0 - 30  # GDAL shifts a PixelIsPoint tiepoint by half a pixel


def test_fast_path_errors_stay_rasterio_s() -> None:
    good = geotiff.encode(np.ones((20, 20), np.uint16), 32633, 0, 0, 60)
    for bad in (good[:100], good[:-50]):
        with pytest.raises(geotiff.RasterError, match=r"x_B01\.tif: not a readable GeoTIFF"):
            geotiff.decode(bad, "x_B01.tif")


def _tiled(tile: int, width: int = 120, height: int = 120) -> bytes:
    """A uint16 TIFF of one DEFLATE tile of `tile` x `tile` pixels, written by hand (GDAL would not write it)."""
    payload = zlib.compress(bytes(2 * tile * tile) if tile <= 512 else bytes(4096))
    entries = [(256, 4, width), (257, 4, height), (258, 3, 16), (259, 3, 8), (262, 3, 1), (277, 3, 1)]
    entries += [(322, 4, tile), (323, 4, tile), (324, 4, 8 + 2 + 12 * 11 + 4), (325, 4, len(payload)), (339, 3, 1)]
    ifd = struct.pack("<H", len(entries))
    for code, typ, value in entries:
        ifd += struct.pack("<HHIHH", code, typ, 1, value, 0) if typ == 3 else struct.pack("<HHII", code, typ, 1, value)
    return b"II*\0" + struct.pack("<I", 8) + ifd + b"\0\0\0\0" + payload


def _vrt(path: str, header: str = "") -> bytes:
    return f"""{header}<VRTDataset rasterXSize="120" rasterYSize="120">
  <SRS>EPSG:32633</SRS><GeoTransform>400000, 10, 0, 5000000, 0, -10</GeoTransform>
  <VRTRasterBand dataType="UInt16" band="1" subClass="VRTRawRasterBand">
    <SourceFilename relativeToVRT="0">{path}</SourceFilename>
    <ImageOffset>0</ImageOffset><PixelOffset>2</PixelOffset><LineOffset>240</LineOffset>
  </VRTRasterBand>
</VRTDataset>""".encode()


def test_only_a_tiff_is_decoded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"SECRET-" * 5000)
    for decode in (geotiff.decode, geotiff.decode_gdal):  # the last tier checks too, called on its own
        with pytest.raises(
            geotiff.RasterError, match=r"^x_B02\.tif: not a readable GeoTIFF: not a TIFF file \(it looks like XML"
        ) as e:
            decode(_vrt(str(secret)), "x_B02.tif", ((120, 120), "uint16"))
        assert e.value.detail is None
    # TIFF magic in front of VRT XML: GDAL's GTiff driver alone is asked, and it reads no VRT
    with pytest.raises(geotiff.RasterError, match=r"^x_B02\.tif: not a readable GeoTIFF$"):
        geotiff.decode(b"II*\0" + _vrt(str(secret)), "x_B02.tif")


@pytest.mark.parametrize("bigtiff", [False, True])
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_every_kind_of_tiff_is_decoded(bigtiff: bool, byteorder: str) -> None:  # type: ignore[no-untyped-def]
    array = np.arange(400, dtype=np.uint16).reshape(20, 20)
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, bigtiff=bigtiff, byteorder=byteorder)
    data = buf.getvalue()
    assert data[:4] in geotiff.TIFF_MAGIC
    r = geotiff.decode(data, "x.tif", ((20, 20), "uint16"))
    assert np.array_equal(r.array, array) and r.epsg is None


def test_a_tile_far_larger_than_its_image_is_refused_before_it_is_inflated() -> None:
    assert np.array_equal(geotiff.decode(_tiled(128), "x.tif").array, np.zeros((120, 120), np.uint16))
    # 14,400 pixels that GDAL reads as one 16384x16384 tile: 512 MB and ~1 s per file, 2 GB at 32768
    with pytest.raises(geotiff.RasterError, match=r"x\.tif: blocks of 16384x16384 pixels for a 120x120 image"):
        geotiff.decode(_tiled(16384), "x.tif", ((120, 120), "uint16"))


def test_gdal_s_own_words_are_only_in_the_detail() -> None:
    good = geotiff.encode(np.ones((20, 20), np.uint16), 32633, 0, 0, 60)
    with pytest.raises(geotiff.RasterError) as e:
        geotiff.decode(good[:-50], "/x/y_B02.tif")
    assert str(e.value) == "/x/y_B02.tif: not a readable GeoTIFF"
    assert e.value.detail and "/vsimem" not in e.value.detail and "/x/y_B02.tif" in e.value.detail


def test_an_archive_member_that_is_not_a_tiff_is_quarantined(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The ingest's decode path: a VRT member georeferenced like the pair (which the old decoder read, pixels from
    a local file) is a `corrupt_file` problem naming the member; the other pair is read."""
    import pyarrow.parquet as pq

    from bigearth.archive.layouts import layout_for
    from bigearth.archive.reader import Problem, fetch_pairs, read_pairs
    from bigearth.core.storage import BlobReader
    from bigearth.synth.archive import synthesize

    root = tmp_path / "v2"
    synthesize(str(root), layout="v2", pairs=2, seed=5, progress=False, workers=1)
    lay = layout_for("v2", str(root))
    rows = pq.read_table(root / "metadata.parquet").to_pylist()
    blobs = fetch_pairs(BlobReader(str(root)), lay, rows)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(range(256)) * 200)
    path = lay.files(rows[0])["B02"]
    ref = geotiff.decode(blobs[path], path)
    vrt = _vrt(str(secret)).replace(b"400000, 10", f"{ref.ulx}, 10".encode()).replace(b"5000000", str(ref.uly).encode())
    vrt = vrt.replace(b"EPSG:32633", f"EPSG:{ref.epsg}".encode())
    blobs[path] = vrt
    bad, good = read_pairs(None, lay, rows, blobs=blobs)  # type: ignore[arg-type]
    assert isinstance(bad, Problem) and bad.kind == "corrupt_file", bad
    assert bad.message.startswith(f"{path}: not a readable GeoTIFF: not a TIFF file (it looks like XML"), bad.message
    assert isinstance(good, dict) and good["patch_id"] == rows[1]["patch_id"]


def test_a_chain_of_many_images_is_not_walked() -> None:
    """A band whose image is followed by 2 million empty IFDs (16 MB, the service's default body limit):
    tifffile's `len(pages)` walked them all (5 s of Python holding the GIL); the fast path reads one pointer."""
    good = geotiff.encode(np.ones((120, 120), np.uint16), 32633, 0, 0, 10)
    n, start = 2_000_000, len(good) + len(good) % 2
    chain = np.zeros(n, dtype=[("count", "<u2"), ("next", "<u4"), ("pad", "<u2")])
    chain["next"] = start + 8 * np.arange(1, n + 1)
    chain["next"][-1] = 0
    data = bytearray(good + bytes(start - len(good)) + chain.tobytes())
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    struct.pack_into("<I", data, ifd + 2 + 12 * count, start)  # the first image's "next IFD"
    began = time.perf_counter()
    assert geotiff.decode_fast(bytes(data)) is None  # more than one image: not the archive's kind
    r = geotiff.decode(bytes(data), "x.tif", ((120, 120), "uint16"))  # GDAL reads the first image only
    assert time.perf_counter() - began < 1.0
    assert np.array_equal(r.array, np.ones((120, 120), np.uint16))


# --- Hostile tag directories, crafted GeoKeys and size claims (review of issue 22.1) ---------------------------------


@pytest.mark.parametrize(("order", "big"), TIFF_FORMATS)
def test_strip_arrays_are_bounded_and_the_first_image_alone_is_read(order: str, big: bool) -> None:
    image = [e for e in TIFF_IMAGE if e[0] not in (273, 279)]
    plain = craft_tiff([*image, (273, 4, 1, None), (279, 4, 1, 28800)], bytes(range(256)) * 113, order, big)
    want = np.frombuffer(bytes(range(256)) * 113, dtype=np.dtype("u2").newbyteorder(order), count=14400)
    assert np.array_equal(geotiff.decode(plain, "x.tif", ((120, 120), "uint16")).array, want.reshape(120, 120))
    many = craft_tiff([*image, (273, 4, 1 << 24, None), (279, 4, 1 << 24, None)], bytes(1 << 16), order, big)
    with pytest.raises(geotiff.RasterError, match=r"x\.tif: not a readable GeoTIFF: 16777216 strips or tiles"):
        geotiff.decode(many, "x.tif")
    # a second image whose directory is a tag bomb: GDAL is handed the first image only (its pointer cleared)
    second = len(plain) + len(plain) % 2
    bomb = craft_tiff([(1000 + i, 7, 1 << 20, 0) for i in range(2000)], order=order, big=big)[16 if big else 8 :]
    chained = bytearray(plain + bytes(second - len(plain)) + bomb)
    first, head, size = (16, 8, 20) if big else (8, 2, 12)
    n = len(TIFF_IMAGE)
    struct.pack_into(order + ("Q" if big else "I"), chained, first + head + size * n, second)
    r = geotiff.decode_gdal(bytes(chained), "x.tif", ((120, 120), "uint16"))
    assert np.array_equal(r.array, want.reshape(120, 120))


def _crafted_citation() -> bytes:
    """A GeoTIFF whose model type is unknown and whose citation is not UTF-8: rasterio's CRS parsing raised
    UnicodeDecodeError (not a RasterioError: a 500 on upload, and a dead shard task in the ingest)."""
    import rasterio
    from rasterio.io import MemoryFile

    profile = {"driver": "GTiff", "width": 120, "height": 120, "count": 1, "dtype": "uint16", "compress": "deflate"}
    with MemoryFile() as mem:
        with mem.open(**profile, crs="EPSG:32633", transform=rasterio.Affine(10, 0, 0, 0, -10, 0)) as ds:
            ds.write(np.ones((1, 120, 120), np.uint16))
        data = bytearray(mem.read())
    at = data.index(struct.pack("<HHHH", 1024, 0, 1, 1))  # GTModelTypeGeoKey = projected
    struct.pack_into("<H", data, at + 6, 68)  # an unknown model type
    data[data.index(b"WGS 84 / UTM zone 33N") + 5] = 0xA2  # one byte that is not UTF-8 in the citation
    return bytes(data)


def test_any_failure_inside_decoding_is_a_raster_error() -> None:
    from bigearth.api.schemas import ApiError
    from bigearth.api.uploads import from_geotiffs

    bad = _crafted_citation()
    for decode in (geotiff.decode, geotiff.decode_gdal):
        with pytest.raises(geotiff.RasterError) as e:
            decode(bad, "S2A_x/x_B02.tif")
        assert str(e.value) == "S2A_x/x_B02.tif: not a readable GeoTIFF"
        assert e.value.detail and e.value.detail.startswith("UnicodeDecodeError: "), e.value.detail
    with pytest.raises(ApiError) as api:
        from_geotiffs([("B02", "x_B02.tif", bad)])
    assert api.value.status == 422 and str(api.value) == "x_B02.tif: band B02: not a readable GeoTIFF"


def test_an_ingest_member_that_breaks_the_decoder_is_quarantined(synth_v2_maps) -> None:  # type: ignore[no-untyped-def]
    import pyarrow.parquet as pq

    from bigearth.archive.layouts import layout_for
    from bigearth.archive.reader import Problem, fetch_pairs, read_pairs
    from bigearth.core.storage import BlobReader

    lay = layout_for("v2", synth_v2_maps)
    lay.reference_maps = True  # what `--reference-maps` sets
    rows = pq.read_table(f"{synth_v2_maps}/metadata.parquet").to_pylist()
    for member in ("B02", "VH", "reference_map"):
        blobs = fetch_pairs(BlobReader(synth_v2_maps), lay, rows)
        path = lay.files(rows[0])[member]
        blobs[path] = _crafted_citation()
        bad, good = read_pairs(None, lay, rows, blobs=blobs)  # type: ignore[arg-type]
        assert isinstance(bad, Problem) and bad.kind == "corrupt_file", bad
        assert bad.message.startswith(f"{path}: not a readable GeoTIFF (GDAL: UnicodeDecodeError"), bad.message
        assert isinstance(good, dict) and good["patch_id"] == rows[1]["patch_id"]


def test_a_directory_offset_past_the_file_is_refused() -> None:
    """Found by the mutation fuzz: a BigTIFF directory offset too large for `struct` raised OverflowError (a 500)."""
    for offset in (1 << 40, 1 << 63, (1 << 64) - 1):
        data = b"II+\0" + struct.pack("<HHQ", 8, 0, offset) + bytes(64)
        for decode in (geotiff.decode, geotiff.decode_gdal):
            with pytest.raises(geotiff.RasterError, match=r"^x\.tif: not a readable GeoTIFF$"):
                decode(data, "x.tif")
