"""GeoTIFF decoding in a fresh interpreter under a memory limit (a subprocess): a hostile tag directory or a size
claim is refused before any decoder allocates what it claims, in bounded time. The rest of the GeoTIFF tests are in
tests/unit/test_geotiff.py."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from bigearth.archive import geotiff
from helpers import TIFF_FORMATS, TIFF_IMAGE, craft_tiff


def _under_a_memory_limit(code: str, data: bytes, tmp_path, **names: object) -> tuple[str, float]:  # type: ignore[no-untyped-def]
    """Run `code` in a fresh interpreter limited to 1.5 GB of address space, with `data` (the file) and `names`
    (strings) bound; `code` sets `out`. Returns `repr(out)` and the seconds `code` took."""
    import os
    import resource
    import subprocess
    import sys

    path = tmp_path / "input.bin"
    path.write_bytes(data)
    prelude = "import pathlib, time\nimport bigearth.archive.reader, bigearth.api.uploads, pyarrow.parquet\n"
    prelude += f"data = pathlib.Path({str(path)!r}).read_bytes()\n"  # imports not timed, the code alone
    prelude += "".join(f"{k} = {v!r}\n" for k, v in names.items())
    prog = prelude + "began = time.perf_counter()\n" + code + "\nprint(repr(out)); print(time.perf_counter() - began)\n"
    limit = 1536 << 20
    r = subprocess.run(
        [sys.executable, "-c", prog],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    *lines, seconds = r.stdout.strip().splitlines()
    return "\n".join(lines), float(seconds)


_DECODE = """from bigearth.archive import geotiff
try:
    out = geotiff.decode(data, "x_B02.tif", expect)
    out = ("decoded", out.array.shape)
except geotiff.RasterError as e:
    out = ("refused", str(e))"""


def test_the_layout_fast_path_reads_no_value_it_does_not_use(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """20,000 tags pointing at the same 800 KB of a 1 MB file: `decode_layout` read every value (MemoryError
    at 1.5 GB; 842 MB for a 212 KB file); now it reads the few tags of the archive's layout, bounded."""
    bomb = craft_tiff([(1000 + i, 3, 400_000, None) for i in range(20_000)], bytes(800_000))
    out, seconds = _under_a_memory_limit(
        "from bigearth.archive import geotiff\nout = geotiff.decode_layout(data)", bomb, tmp_path
    )
    assert out == "None" and seconds < 1.0
    upload = """from bigearth.api.schemas import ApiError
from bigearth.api.uploads import from_geotiffs
try:
    out = from_geotiffs([("B02", "x_B02.tif", data)])
except ApiError as e:
    out = (e.status, str(e))"""
    out, seconds = _under_a_memory_limit(upload, bomb, tmp_path)
    assert out == repr((422, "x_B02.tif: band B02: not a readable GeoTIFF: 20000 TIFF tags, expected at most 64"))
    assert seconds < 1.0
    good = geotiff.encode(np.ones((120, 120), np.uint16), 32633, 0, 0, 10)
    assert geotiff.decode_layout(good) is not None
    (ifd,) = struct.unpack_from("<I", good, 4)
    many_strips = bytearray(good)  # StripOffsets claiming 2**30 entries: not the layout, nothing read
    struct.pack_into("<I", many_strips, ifd + 2 + 12 * 5 + 4, 1 << 30)
    assert geotiff.decode_layout(bytes(many_strips)) is None
    # decode reads the archive's layout without a scan: what decode_layout takes is within the scan's limits
    long_citation = bytearray(good)  # GeoAsciiParams (not read by the layout) claiming 100,000 bytes
    struct.pack_into("<I", long_citation, ifd + 2 + 12 * 14 + 4, 100_000)
    assert geotiff.decode_layout(bytes(long_citation)) is None
    with pytest.raises(geotiff.RasterError, match=r"^x\.tif: not a readable GeoTIFF: 100\d{3} bytes of tag values"):
        geotiff.decode(bytes(long_citation), "x.tif")


@pytest.mark.parametrize(("order", "big"), TIFF_FORMATS)
@pytest.mark.parametrize(
    ("what", "entries", "refusal"),
    [
        # 4000 private tags of 2 MB each over the same 2 MB: libtiff loaded them all (8 GB, seconds), then GDAL
        # accepted the band
        ("private tags", [(1000 + i, 7, 2_000_000, None) for i in range(4000)], "4009 TIFF tags, expected at most 64"),
        ("one private tag", [(50_000, 7, 2_000_000, None)], "TIFF tag 50000 is not one of a GeoTIFF band"),
        ("an EXIF directory", [(34665, 4, 1, 8)], "TIFF tag 34665 is not one of a GeoTIFF band"),
        # allowed tags, each 2 MB: values beyond the budget
        (
            "large allowed tags",
            [(270, 2, 2_000_000, None), (305, 2, 2_000_000, None), (42112, 2, 2_000_000, None)],
            "6000000 bytes of tag values, expected at most 65536",
        ),
    ],
)
def test_a_tag_directory_is_checked_before_any_decoder_reads_it(
    tmp_path, order: str, big: bool, what: str, entries: list, refusal: str
) -> None:  # type: ignore[no-untyped-def]
    data = craft_tiff(TIFF_IMAGE + entries, bytes(2_000_000), order, big)
    out, seconds = _under_a_memory_limit(_DECODE, data, tmp_path, expect=((120, 120), "uint16"))
    status, message = eval(out)  # the subprocess's repr of a tuple of strings
    assert status == "refused" and message.startswith(f"x_B02.tif: not a readable GeoTIFF: {refusal}"), (what, out)
    assert seconds < 1.0, (what, seconds)
    for decode in (geotiff.decode, geotiff.decode_gdal):  # the last tier checks too, called on its own
        with pytest.raises(geotiff.RasterError, match=refusal):
            decode(data, "x_B02.tif")


_READ_PAIRS = """import pyarrow.parquet as pq
from bigearth.archive.layouts import layout_for
from bigearth.archive.reader import fetch_pairs, read_pairs
from bigearth.core.storage import BlobReader
lay = layout_for("v2", root)
lay.reference_maps = True  # what `--reference-maps` sets
rows = pq.read_table(root + "/metadata.parquet").to_pylist()
blobs = fetch_pairs(BlobReader(root), lay, rows)
blobs[lay.files(rows[0])[member]] = data
first, second = read_pairs(None, lay, rows, blobs=blobs)
out = (first, type(second).__name__, lay.files(rows[0])[member])"""


@pytest.mark.parametrize(
    ("member", "dtype", "shape", "kind", "reason"),
    [
        # 498 bytes claiming 60000x60000 pixels: GDAL allocated 6.7 GiB (MemoryError out of read_pairs)
        ("B02", "uint16", (60000, 60000), "wrong_shape", "expected 120x120 pixels for B02, got 60000x60000"),
        ("reference_map", "uint16", (60000, 60000), "wrong_shape", "expected a 120x120 uint16 reference map, got "),
        ("B02", "float32", (120, 120), "wrong_dtype", "expected uint16 for B02, got float32"),
        ("VV", "uint16", (120, 120), "wrong_dtype", "expected float32 for VV, got uint16"),
    ],
)
def test_an_ingest_member_s_size_is_checked_from_its_header(  # type: ignore[no-untyped-def]
    synth_v2_maps, tmp_path, member, dtype, shape, kind, reason
) -> None:
    import rasterio
    from rasterio.io import MemoryFile

    from bigearth.archive.reader import Problem

    profile = {"driver": "GTiff", "height": shape[0], "width": shape[1], "count": 1, "dtype": dtype}
    with MemoryFile() as mem:  # sparse: no block written
        with mem.open(
            **profile,
            blockysize=shape[0],
            SPARSE_OK=True,
            crs="EPSG:32633",
            transform=rasterio.Affine(10, 0, 0, 0, -10, 0),
        ):
            pass
        data = bytes(mem.read())
    assert len(data) < 1000
    out, _ = _under_a_memory_limit(_READ_PAIRS, data, tmp_path, root=synth_v2_maps, member=member)
    problem, second, path = eval(out, {"Problem": Problem})  # our own subprocess's repr
    assert second == "dict"
    assert problem.kind == kind and problem.message.startswith(f"{path}: {reason}"), problem
