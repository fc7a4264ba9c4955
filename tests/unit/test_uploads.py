"""The upload parsers against hostile input: every case a 4xx `ApiError` naming the band or field and what was
expected, decided before anything large is decoded or inflated; never a silent cast, never an exception of
another kind (a 500)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import socket
import threading
import zipfile

import httpx
import numpy as np
import pytest
import rasterio
from rasterio.io import MemoryFile
from starlette.requests import Request

from bigearth.api.schemas import ApiError
from bigearth.api.uploads import NPZ_MAX_MEMBER_BYTES, from_geotiffs, from_npz
from bigearth.archive.geotiff import encode
from bigearth.serving.bodies import read_upload


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


# --------------------------------------------------------------------------------------------------------------------
# A band file is a TIFF or nothing (issue 22): GDAL XML (VRT, WMS), other raster formats and header files that name
# other files are refused from their first bytes, before GDAL sees them: no local file read, no connection made.

SECRET = b"BIGEARTH-SECRET-FILE-CONTENT-"  # what a local file the service can read holds


class Listener:
    """A plain TCP server on 127.0.0.1 in a thread that records every connection (and answers it with an HTTP 200
    of secret bytes, so a client that connects gets an answer at once instead of waiting for a timeout)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.connections: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        body = SECRET * 2000
        while not self._stop.is_set():
            try:
                conn, addr = self.sock.accept()
            except TimeoutError:
                continue
            self.connections.append(addr)
            with conn:
                conn.settimeout(1.0)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener():  # type: ignore[no-untyped-def]
    srv = Listener()
    yield srv
    srv.close()


def _vrt_raw(path: str) -> bytes:  # a VRT whose pixels are the bytes of a local file
    return f"""<VRTDataset rasterXSize="120" rasterYSize="120">
  <VRTRasterBand dataType="UInt16" band="1" subClass="VRTRawRasterBand">
    <SourceFilename relativeToVRT="0">{path}</SourceFilename>
    <ImageOffset>0</ImageOffset><PixelOffset>2</PixelOffset><LineOffset>240</LineOffset>
  </VRTRasterBand>
</VRTDataset>""".encode()


def _vrt_remote(port: int) -> bytes:  # a VRT whose pixels come from a URL (/vsicurl/)
    return f"""<VRTDataset rasterXSize="120" rasterYSize="120">
  <VRTRasterBand dataType="UInt16" band="1">
    <SimpleSource>
      <SourceFilename relativeToVRT="0">/vsicurl/http://127.0.0.1:{port}/B02.tif</SourceFilename>
      <SourceBand>1</SourceBand>
    </SimpleSource>
  </VRTRasterBand>
</VRTDataset>""".encode()


def _wms(port: int) -> bytes:  # a GDAL WMS/TMS description: its tiles come from a URL
    return f"""<GDAL_WMS>
  <Service name="TMS"><ServerUrl>http://127.0.0.1:{port}/${{z}}/${{x}}/${{y}}.png</ServerUrl></Service>
  <DataWindow>
    <UpperLeftX>0</UpperLeftX><UpperLeftY>1200</UpperLeftY><LowerRightX>1200</LowerRightX><LowerRightY>0</LowerRightY>
    <TileLevel>0</TileLevel><TileCountX>1</TileCountX><TileCountY>1</TileCountY><SizeX>120</SizeX><SizeY>120</SizeY>
  </DataWindow>
  <Projection>EPSG:32633</Projection><BlockSizeX>120</BlockSizeX><BlockSizeY>120</BlockSizeY>
  <BandsCount>1</BandsCount><DataType>UInt16</DataType>
</GDAL_WMS>""".encode()


def _ers(path: str) -> bytes:  # an ER Mapper header: its pixels are the raw bytes of the file it names
    return f"""DatasetHeader Begin
  Version = "6.0"
  DataFile = "{path}"
  DataSetType = ERStorage
  DataType = Raster
  ByteOrder = LSBFirst
  CoordinateSpace Begin
    Datum = "RAW"
    Projection = "RAW"
    CoordinateType = RAW
  CoordinateSpace End
  RasterInfo Begin
    CellType = Unsigned16BitInteger
    NrOfLines = 120
    NrOfCellsPerLine = 120
    NrOfBands = 1
  RasterInfo End
DatasetHeader End
""".encode()


def _gdal_file(driver: str, dtype: str) -> bytes:
    with MemoryFile() as mem:
        with mem.open(driver=driver, width=120, height=120, count=1, dtype=dtype) as ds:
            ds.write(np.full((1, 120, 120), 7, dtype))
        return bytes(mem.read())


HOSTILE = {
    "vrt-local-file": lambda secret, port: _vrt_raw(secret),
    "vrt-after-whitespace": lambda secret, port: b" \n\t" + _vrt_raw(secret),
    "vrt-vsicurl": lambda secret, port: _vrt_remote(port),
    "gdal-wms": lambda secret, port: _wms(port),
    "ers-header": lambda secret, port: _ers(secret),
    "vsicurl-name": lambda secret, port: f"/vsicurl/http://127.0.0.1:{port}/B02.tif".encode(),
    "png-uint16": lambda secret, port: _gdal_file("PNG", "uint16"),
    "jpeg": lambda secret, port: _gdal_file("JPEG", "uint8"),
    "hdf5": lambda secret, port: b"\x89HDF\r\n\x1a\n" + bytes(2048),
    "netcdf": lambda secret, port: b"CDF\x01" + bytes(2048),
    "envi-header": lambda secret, port: b"ENVI\nsamples = 120\nlines = 120\nbands = 1\ndata type = 12\n",
}


def _request(files: list[tuple[str, str, bytes]]) -> Request:
    """A real Starlette request holding a multipart body, as the ingress's upload routes receive it."""
    req = httpx.Request("POST", "http://test/v1/classify", files=[(f, (n, d, "image/tiff")) for f, n, d in files])
    body = req.read()
    sent = False

    async def receive() -> dict[str, object]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(k.lower().encode(), v.encode()) for k, v in req.headers.items()]
    scope = {"type": "http", "method": "POST", "path": "/v1/classify", "headers": headers, "query_string": b""}
    return Request(scope, receive)


def _upload(files: list[tuple[str, str, bytes]]) -> dict[str, np.ndarray]:
    bands, _ = asyncio.run(read_upload(_request(files), limit=16 << 20, timeout=5.0))
    return bands


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_band_that_is_not_a_tiff_is_refused_before_gdal_sees_it(kind: str, listener: Listener, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Each as the B02 of an upload (what /v1/classify, /v1/search and /v1/quicklook all read through
    `read_upload`): a 422 naming the band and what a band file is; nothing of the file it names, and no
    connection to the listener it names."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET * 2000)
    data = HOSTILE[kind](str(secret), listener.port)
    good = _tiff(np.ones((120, 120), np.uint16))
    with pytest.raises(ApiError) as e:
        _upload([("B03", "x_B03.tif", good), ("B02", "x_B02.tif", data)])
    message = str(e.value)
    assert (e.value.status, e.value.field) == (422, "B02"), message
    assert message.startswith("x_B02.tif: band B02: not a readable GeoTIFF: not a TIFF file"), message
    assert "expected a single-band GeoTIFF as in the archive" in message
    assert SECRET.decode() not in message and "/vsimem" not in message and str(secret) not in message
    assert listener.connections == []


def test_what_a_non_tiff_band_is_said_in_the_project_s_words(listener: Listener) -> None:
    cases = {
        "gdal-wms": "it looks like XML, e.g. a GDAL VRT or WMS description",
        "png-uint16": "it looks like a PNG image",
        "hdf5": "it looks like an HDF5 / NetCDF-4 file",
        "vsicurl-name": "it looks like a GDAL virtual file name",
        "vrt-after-whitespace": "it looks like XML",
        "envi-header": "it looks like an ENVI header",
        "jpeg": "it looks like a JPEG image",
    }
    for kind, words in cases.items():
        data = HOSTILE[kind]("/nonexistent", listener.port)
        _raises(lambda d=data: from_geotiffs([("B02", "x_B02.tif", d)]), 422, "B02", "band B02", words)
    assert listener.connections == []


def test_gdal_s_own_words_stay_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    damaged = _tiff(np.ones((120, 120), np.uint16))[:-3000]  # a TIFF whose strips run past its end
    with caplog.at_level(logging.INFO, logger="bigearth.serve"):
        _raises(lambda: from_geotiffs([("B02", "x_B02.tif", damaged)]), 422, "B02", "band B02")
    with pytest.raises(ApiError) as e:
        from_geotiffs([("B02", "x_B02.tif", damaged)])
    assert str(e.value) == "x_B02.tif: band B02: not a readable GeoTIFF"
    assert "GDAL:" in caplog.text and "/vsimem" not in caplog.text  # the log has GDAL's words, with the file's name


def test_an_upload_is_decoded_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import bigearth.serving.bodies as inputs  # where `read_upload` looks the parsers up

    threads: list[int] = []
    loop_thread = threading.get_ident()  # asyncio.run runs its loop in this thread
    for name in ("from_geotiffs", "from_npz"):
        real = getattr(inputs, name)

        def spy(*args, _real=real):  # type: ignore[no-untyped-def]
            threads.append(threading.get_ident())
            return _real(*args)

        monkeypatch.setattr(inputs, name, spy)
    b02 = np.arange(120 * 120, dtype=np.uint16).reshape(120, 120)
    bands = _upload([("B02", "x_B02.tif", _tiff(b02))])
    assert np.array_equal(bands["B02"], b02)
    bands = _upload([("npz", "patch.npz", _npz(B02=b02))])
    assert np.array_equal(bands["B02"], b02)
    assert len(threads) == 2 and loop_thread not in threads


def test_gdal_s_settings_while_decoding_allow_no_remote_file(listener: Listener) -> None:
    """Behind the magic check and the GTiff driver, the settings `decode` runs GDAL under refuse any /vsicurl/
    file too (without them GDAL connects, several times)."""
    from bigearth.archive.geotiff import GDAL_OPTIONS

    with pytest.raises(rasterio.errors.RasterioIOError), rasterio.Env(**GDAL_OPTIONS):
        rasterio.open(f"/vsicurl/http://127.0.0.1:{listener.port}/B02.tif")
    assert listener.connections == []
