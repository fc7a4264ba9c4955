"""Property-based tests (Hypothesis) of what the service parses from strangers: band GeoTIFFs, `.npz` archives and
the JSON request models. Whatever the bytes, the answer is a band dict or a 4xx `ApiError` (a pydantic
`ValidationError` for the models, which the ingress turns into a 422); never another exception, which would be a
500. The run is bounded and derandomised (the same examples every run) so that CI stays reproducible."""

from __future__ import annotations

import contextlib
import io
import struct
import zipfile
from datetime import datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bigearth.api.schemas import ApiError, ClassifyByIdRequest, SearchRequest
from bigearth.api.uploads import from_geotiffs, from_npz
from bigearth.archive.geotiff import MAX_PIXELS, TIFF_MAGIC, RasterError, decode, encode

BOUNDED = settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
BANDS = ["B02", "B8A", "B05", "VV", "VH", "B01", "s2_10m", "s1", "x", ""]


def _valid_tiff(band: str) -> bytes:
    size = {"B05": 60, "B8A": 60, "B01": 20}.get(band, 120)
    dtype = np.float32 if band in ("VV", "VH") else np.uint16
    return encode(np.ones((size, size), dtype), epsg=32633, ulx=404400.0, uly=5342400.0, res=10.0)


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _client_error(call: Any) -> None:
    try:
        call()
    except ApiError as e:
        assert 400 <= e.status < 500, (e.status, str(e))
        assert str(e), "an error must say what was wrong"


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for offset, value in edits:
        out[offset % len(out)] = value
    return bytes(out[:cut] if cut is not None else out)


@BOUNDED
@given(st.binary(max_size=4096), st.sampled_from(BANDS), st.sampled_from(["x.tif", "B02.tif", None, "a.npz"]))
def test_random_bytes_as_a_band_geotiff(data: bytes, field: str, filename: str | None) -> None:
    _client_error(lambda: from_geotiffs([(field, filename, data)]))


@BOUNDED
@given(
    st.sampled_from(["B02", "B05", "VV", "B01"]),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=12),
    st.one_of(st.none(), st.integers(0, 600)),
)
def test_a_geotiff_with_random_header_and_tag_bytes(band: str, edits: list[tuple[int, int]], cut: int | None) -> None:
    """Bytes changed in the first 400 bytes (the TIFF header and its tag directory: sizes, offsets, types,
    compression, sample format) or the file cut short."""
    data = _mutate(_valid_tiff(band), edits, cut)
    _client_error(lambda: from_geotiffs([(band, f"x_{band}.tif", data)]))


#: Each case has a time limit: a band file that takes GDAL or tifffile seconds is a finding, not a slow example.
TIMED = settings(max_examples=120, deadline=2000, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

#: What GDAL would open instead of a TIFF: its XML formats, headers naming other files, other rasters.
NOT_TIFF = [
    b'<VRTDataset rasterXSize="120" rasterYSize="120"><VRTRasterBand dataType="UInt16" band="1" '
    b'subClass="VRTRawRasterBand"><SourceFilename>/etc/hostname</SourceFilename></VRTRasterBand></VRTDataset>',
    b'<GDAL_WMS><Service name="TMS"><ServerUrl>http://127.0.0.1:9/${z}/${x}/${y}.png</ServerUrl></Service>',
    b'DatasetHeader Begin\n DataFile = "/etc/hostname"\n',
    b"ENVI\nsamples = 120\nlines = 120\nbands = 1\ndata type = 12\n",
    b"/vsicurl/http://127.0.0.1:9/B02.tif",
    b"\x89PNG\r\n\x1a\n",
    b"\x89HDF\r\n\x1a\n",
    b"CDF\x01",
]


@TIMED
@given(st.sampled_from(TIFF_MAGIC), st.binary(max_size=2048), st.sampled_from(["B02", "B05", "VV"]))
def test_random_bytes_behind_a_tiff_magic(magic: bytes, rest: bytes, band: str) -> None:
    """Past the magic check: the fast paths and GDAL's GTiff driver on garbage, each case within the deadline."""
    _client_error(lambda: from_geotiffs([(band, f"x_{band}.tif", magic + rest)]))


@TIMED
@given(st.sampled_from(NOT_TIFF), st.sampled_from([b"", b" ", b"\n\t ", b"\xef\xbb\xbf"]), st.binary(max_size=512))
def test_gdal_formats_as_a_band_are_refused_from_their_first_bytes(doc: bytes, lead: bytes, tail: bytes) -> None:
    with pytest.raises(ApiError) as e:
        from_geotiffs([("B02", "x_B02.tif", lead + doc + tail)])
    assert e.value.status == 422 and e.value.field == "B02"
    assert str(e.value).startswith("x_B02.tif: band B02: not a readable GeoTIFF: not a TIFF file (it ")


@BOUNDED
@given(st.binary(max_size=4096))
def test_random_bytes_as_an_npz(data: bytes) -> None:
    _client_error(lambda: from_npz(data))


arrays = st.builds(
    lambda shape, dtype: np.zeros(shape, dtype),
    st.lists(st.integers(0, 130), min_size=0, max_size=3).map(tuple),
    st.sampled_from([np.uint16, np.float32, np.uint8, np.float64, np.int64, np.bool_]),
)


@BOUNDED
@given(st.dictionaries(st.sampled_from(BANDS), arrays, max_size=4))
def test_random_arrays_in_an_npz(members: dict[str, np.ndarray]) -> None:
    data = _npz({k or "empty": v for k, v in members.items()})
    _client_error(lambda: from_npz(data))


@BOUNDED
@given(
    st.lists(st.tuples(st.sampled_from([*BANDS, "../B02", "B02/x", "B02.npy"]), st.binary(max_size=512)), max_size=6)
)
@example([("B02", b"")])  # found by this test: numpy hands back raw bytes for it (was a 500)
def test_random_zip_archives_as_an_npz(members: list[tuple[str, bytes]]) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, content in members:
            z.writestr(name if name.endswith(".npy") else f"{name}.npy", content)
    _client_error(lambda: from_npz(buf.getvalue()))


@BOUNDED
@given(
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=16),
    st.one_of(st.none(), st.integers(0, 3000)),
)
def test_a_valid_npz_with_random_bytes_changed(edits: list[tuple[int, int]], cut: int | None) -> None:
    data = _mutate(_npz({"B02": np.ones((120, 120), np.uint16), "VV": np.ones((120, 120), np.float32)}), edits, cut)
    _client_error(lambda: from_npz(data))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
request_fields = st.sampled_from(
    ["patch_id", "vector", "k", "using", "filter", "threshold", "labels_any", "labels_all", "split", "country"]
)
filter_fields = st.sampled_from(["labels_any", "labels_all", "split", "country", "season", "date_from", "date_to"])


@BOUNDED
@given(
    st.dictionaries(request_fields, json_values, max_size=5),
    st.dictionaries(filter_fields, json_values, max_size=4),
)
@pytest.mark.parametrize("model", [SearchRequest, ClassifyByIdRequest])
def test_random_json_requests(model: type, fields: dict[str, Any], flt: dict[str, Any]) -> None:
    import json

    body = json.dumps({**fields, "filter": flt} if flt else fields)
    try:
        model.model_validate_json(body)  # type: ignore[attr-defined]
    except (ValidationError, ApiError) as e:
        assert not isinstance(e, ApiError) or 400 <= e.status < 500


@BOUNDED
@given(st.binary(max_size=256))
def test_random_bytes_as_a_json_request(body: bytes) -> None:
    for model in (SearchRequest, ClassifyByIdRequest):
        with contextlib.suppress(ValidationError):  # a 422; anything else escapes and fails the test
            model.model_validate_json(body)


def test_a_corrupted_npy_header_is_a_422() -> None:
    """Found by the fuzzing above: numpy parses the .npy header with `ast.literal_eval`, and a flipped byte in it
    raised SyntaxError (a 500)."""
    data = _npz({"B02": np.ones((120, 120), np.uint16)})
    broken = data.replace(b"'shape': (", b"'shape{: (", 1)
    assert broken != data
    with pytest.raises(ApiError) as e:
        from_npz(broken)
    assert e.value.status == 422 and "not a readable .npz" in str(e.value)


# ------------------------------------------------------------------------------------------------ patch ids, dates
def _real_s2_names() -> list[str]:
    from helpers import SHARED

    real = SHARED / "bigearthnet" / "real"
    return sorted(p.name for p in [*real.glob("v1/BigEarthNet-v1.0/S2*"), *real.glob("v2/BigEarthNet-S2/*/S2*")])


def test_the_patch_id_pattern_takes_every_real_name() -> None:
    from pydantic import TypeAdapter

    from bigearth.api.schemas import PatchId

    names = _real_s2_names()
    assert len(names) >= 8 and any("T93020" in n for n in names)  # the v1 hour-digit bug is a real name
    for name in names:
        assert TypeAdapter(PatchId).validate_python(name) == name


@BOUNDED
@given(
    st.one_of(  # the two forms as FACTS.md and archive.names state them, written out here independently
        st.from_regex(r"S2[AB]_MSIL2A_[0-9]{8}T[0-9]{5,6}_[0-9]{1,2}_[0-9]{1,2}", fullmatch=True),
        st.from_regex(
            r"S2[AB]_MSIL2A_[0-9]{8}T[0-9]{6}_N9999_R[0-9]{3}_T[0-9A-Z]{5}_[0-9]{2}_[0-9]{2}", fullmatch=True
        ),
    )
)
def test_every_id_of_the_archive_forms_is_a_patch_id_the_store_takes(name: str) -> None:
    """The document's pattern accepts exactly the S2 names of both versions (archive.names), and every one of them is
    an id the shard set and the index take (looked up: a 404 when absent, never a 422)."""
    from pydantic import TypeAdapter

    from bigearth.api.schemas import PatchId
    from bigearth.archive.names import S2_ID_RE, V1_S2_RE, V2_S2_RE, check_safe_id

    assert S2_ID_RE.fullmatch(name) and (V1_S2_RE.match(name) or V2_S2_RE.match(name))
    assert TypeAdapter(PatchId).validate_python(name) == name
    assert check_safe_id(name) == name


@BOUNDED
@given(st.one_of(st.text(max_size=80), st.text(alphabet="S12AB_MSIL2ANTR0123456789UP\n", max_size=64)))
@example("S2A_MSIL2A_20170613T101031_87_48\n")  # Python's `$` matches before a final newline: fullmatch
@example("S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_7_43")  # v2 pads h and v
@example("S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48")  # an S1 name is not a pair's id
def test_any_other_string_is_a_422_naming_the_form_expected(text: str) -> None:
    from pydantic import TypeAdapter

    from bigearth.api.schemas import PatchId
    from bigearth.archive.names import S2_ID_RE, V1_S2_RE, V2_S2_RE

    forms = (V1_S2_RE.match(text) or V2_S2_RE.match(text)) and "\n" not in text
    assert bool(S2_ID_RE.fullmatch(text)) == bool(forms), text
    if forms:
        return
    with pytest.raises(ValidationError) as e:
        TypeAdapter(PatchId).validate_python(text)
    assert "not a valid patch id: expected an archived pair's Sentinel-2 patch name" in e.value.errors()[0]["msg"]


@BOUNDED
@given(
    st.datetimes(),
    st.integers(-23 * 60 - 59, 23 * 60 + 59),
    st.booleans(),
)
@example(datetime(1, 1, 1), 60, True)  # year 1 at +01:00 is before year 1 in UTC: was an OverflowError (a 500)
@example(datetime(9999, 12, 31, 23, 59), -300, False)
def test_a_filter_date_anywhere_in_the_calendar_is_a_range_or_a_422(when: Any, minutes: int, aware: bool) -> None:
    """Any date or date-time the schema lets through (`format: date-time`) makes RFC 3339 bounds the engines read,
    never an exception (the document-driven fuzz run sends such dates)."""
    from datetime import UTC, timedelta, timezone

    from bigearth.retrieval.schema import SearchFilter

    value = when.replace(tzinfo=timezone(timedelta(minutes=minutes))) if aware else when
    for key in ("date_from", "date_to"):
        for given_as in (value.isoformat(), value.date().isoformat()):
            lo, hi = SearchFilter.model_validate({key: given_as}).bounds()
            bound = lo or hi
            assert bound is not None and len(bound) == 27 and bound.endswith("Z"), bound
            assert datetime.fromisoformat(bound).tzinfo == UTC


def _gdal_tiff(dtype: str = "uint16", **options: Any) -> bytes:
    """A 120x120 band as GDAL writes it (creation `options`), in memory."""
    import rasterio
    from rasterio.io import MemoryFile

    array = (np.arange(14400) % 3000).reshape(1, 120, 120).astype(dtype)
    profile = {"driver": "GTiff", "width": 120, "height": 120, "count": 1, "dtype": dtype, "crs": "EPSG:32633"}
    with MemoryFile() as mem:
        with mem.open(**profile, transform=rasterio.Affine(10, 0, 404400, 0, -10, 5342400), **options) as ds:
            ds.write(array)
        return bytes(mem.read())


#: Seeds of the mutation fuzz: the archive's own layout and what GDAL writes (tiled, LZW, ZSTD, DEFLATE with a
#: predictor, BigTIFF, big-endian, float32, nodata), built once on first use.
_SEED_OPTIONS: list[dict[str, Any]] = [
    {"compress": "deflate", "predictor": 2, "blockysize": 34},
    {"compress": "lzw", "tiled": True, "blockxsize": 64, "blockysize": 64},
    {"compress": "zstd", "nodata": 0},
    {"compress": "deflate", "BIGTIFF": "YES"},
    {"ENDIANNESS": "BIG"},
    {"ENDIANNESS": "BIG", "BIGTIFF": "YES", "tiled": True, "blockxsize": 32, "blockysize": 32},
    {"dtype": "float32", "compress": "lzw", "predictor": 3},
]
_SEEDS: list[bytes] = []


def _seeds() -> list[bytes]:
    if not _SEEDS:
        _SEEDS.append(_valid_tiff("B02"))
        _SEEDS.extend(_gdal_tiff(**opts) for opts in _SEED_OPTIONS)
    return _SEEDS


def _directory(data: bytes) -> tuple[str, bool, int, int]:
    """A seed's byte order, BigTIFF or not, the offset of its first directory's entries and their count."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\0", b"\0+")
    if big:
        (ifd,) = struct.unpack_from(order + "Q", data, 8)
        (n,) = struct.unpack_from(order + "Q", data, ifd)
        return order, big, ifd + 8, n
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    (n,) = struct.unpack_from(order + "H", data, ifd)
    return order, big, ifd + 2, n


#: Values that break parsers: zero, one, the largest of each width, the image's size, past the end.
_WORDS = [0, 1, 2, 7, 120, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 20]
_TAGS = [256, 257, 258, 259, 273, 277, 278, 279, 284, 317, 322, 323, 324, 325, 339, 33550, 33922, 34264, 34735]
_TAGS += [34736, 34737, 42112, 42113, 330, 34665, 50000]

mutations = st.one_of(
    st.tuples(st.just("byte"), st.integers(0, 1 << 16), st.integers(0, 255)),
    st.tuples(st.just("word"), st.integers(0, 1 << 16), st.sampled_from(_WORDS) | st.integers(0, (1 << 32) - 1)),
    st.tuples(  # one directory entry overwritten: another tag, type, count or value / offset
        st.just("entry"),
        st.integers(0, 63),
        st.tuples(
            st.sampled_from(_TAGS),
            st.integers(0, 19),
            st.sampled_from(_WORDS) | st.integers(0, (1 << 32) - 1),
            st.sampled_from(_WORDS) | st.integers(0, (1 << 32) - 1),
        ),
    ),
    st.tuples(st.just("splice"), st.integers(0, 63), st.integers(0, 63)),  # one entry copied over another
)


def _apply(data: bytes, edits: list[tuple[Any, ...]], cut: int | None) -> bytes:
    out = bytearray(data)
    order, big, entries, n = _directory(data)
    size, word = (20, "Q") if big else (12, "I")
    for kind, at, what in edits:
        if kind == "byte":  # past the magic, mostly in the header and directory, where the parsers look
            out[4 + at % (min(len(out), 1024) - 4) if at < 60_000 else at % len(out)] = what
        elif kind == "word":
            struct.pack_into(order + "I", out, 4 + at % (min(len(out), 1024) - 8), what)
        elif kind == "entry":
            tag, typ, count, value = what
            struct.pack_into(order + "HH" + word, out, entries + size * (at % n), tag, typ, count)
            struct.pack_into(order + "I", out, entries + size * (at % n) + 4 + struct.calcsize(word), value)
        else:
            src, dst = entries + size * (at % n), entries + size * (what % n)
            out[dst : dst + size] = data[src : src + size]
    return bytes(out[:cut] if cut is not None else out)


@settings(max_examples=200, deadline=2000, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, len(_SEED_OPTIONS)),
    st.lists(mutations, min_size=1, max_size=6),
    st.one_of(st.none(), st.integers(0, 40_000)),
)
def test_gdal_written_geotiffs_with_mutated_headers_and_directories(
    seed: int, edits: list[tuple[Any, ...]], cut: int | None
) -> None:
    """A mutation fuzz of real GDAL output: bytes and words overwritten, directory entries rewritten or spliced,
    the file cut short. A decoded raster or a RasterError (an upload: a 4xx), never anything else, within the
    deadline and the decoders' bounds."""
    data = _apply(_seeds()[seed], edits, cut)
    band = "VV" if seed == len(_SEED_OPTIONS) else "B02"
    try:
        r = decode(data, "x.tif")
        assert r.array.size <= MAX_PIXELS
    except RasterError as e:
        assert str(e).startswith("x.tif: "), str(e)
    _client_error(lambda: from_geotiffs([(band, f"x_{band}.tif", data)]))


def test_the_mutation_fuzz_seeds_are_decoded() -> None:
    """The seeds themselves are good bands (so the fuzz starts from files the decoders accept)."""
    for i, data in enumerate(_seeds()):
        band = "VV" if i == len(_SEED_OPTIONS) else "B02"
        assert set(from_geotiffs([(band, f"x_{band}.tif", data)])) == {band}, i
