"""The service fails closed (issue 22, section 5), without Ray: auth required means keys or no start; request lists
are deduplicated and capped; exact search is bounded; browse and facet counts are not recomputed on every page;
a lookup by patch id reads one row (through the page index) into a cache sized in bytes; no storage URL in a 404."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bigearth.api.schemas import MAX_EXACT_K, SearchRequest
from bigearth.core.bands import ALL_BANDS, GROUPS
from bigearth.retrieval.indexer import PAYLOAD_COLUMNS
from bigearth.retrieval.schema import MAX_FILTER_VALUES, SearchFilter
from bigearth.shards.format import PAGE_PAIRS
from bigearth.shards.pages import CorruptPage, Unsupported

PAIRS = 300  # three row groups (128 + 128 + 44)
ALL_GROUPS = {g: GROUPS[g] for g in ("s1", "s2_10m", "s2_20m", "s2_60m")}


def _pid(i: int) -> str:
    return f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{i // 100:02d}_{i % 100:02d}"


def _rows(n: int) -> Iterator[dict[str, Any]]:
    rng = np.random.default_rng(0)
    for i in range(n):
        row: dict[str, Any] = {
            "patch_id": _pid(i),
            "s1_name": f"S1A_IW_GRDH_1SDV_20170613T165043_33UUP_{i // 100}_{i % 100}",
            "split": ("train", "validation", "test")[i % 3],
            "labels": [("Urban fabric", "Arable land", "Coniferous forest")[i % 3]],
            "labels43": None,
            "country": ("Austria", "Finland")[i % 2],
            "tile": "33UUP",
            "s2_acquisition": dt.datetime(2017, 6, 13),
            "s1_acquisition": dt.datetime(2017, 6, 13),
            "epsg": 32633,
            "ulx": 404400.0 + 1200 * (i % 100),
            "uly": 5342400.0,
            "contains_seasonal_snow": False,
            "contains_cloud_or_shadow": False,
        }
        for b in ALL_BANDS:
            row[b.name] = rng.integers(0, 4000, size=b.shape).astype(b.dtype).tobytes()
        yield row


def _write(out: Path, old_layout: bool = False, compression: str = "lz4") -> Path:
    """A shard set of PAIRS pairs in one file: written by the platform's writer (`compression`), or (`old_layout`)
    as shards were before the page index (one page per column chunk, no offset index)."""
    from bigearth.core.storage import open_fs
    from bigearth.shards.format import SHARD_SCHEMA, Manifest, ShardWriter

    fs, _ = open_fs(str(out))
    (out / "train").mkdir(parents=True)
    path = out / "train" / "part-00000.parquet"
    if old_layout:
        table = pa.Table.from_pylist(list(_rows(PAIRS)), schema=SHARD_SCHEMA)
        pq.write_table(table, path, row_group_size=128, compression="lz4", write_page_checksum=True)
    else:
        writer = ShardWriter(fs, str(path), compression)
        for row in _rows(PAIRS):
            writer.write(row)
        writer.close()
    shards = [{"path": "train/part-00000.parquet", "rows": PAIRS, "split": "train"}]
    Manifest(pairs=PAIRS, splits={"train": PAIRS}, shards=shards).save(fs, str(out))
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("limits") / "shards")


@pytest.fixture(scope="module")
def plain_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Uncompressed pages: what the writer makes on a local disk by default (`compression_for`)."""
    return _write(tmp_path_factory.mktemp("limits") / "plain", compression="none")


@pytest.fixture(scope="module")
def old_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("limits") / "old", old_layout=True)


def _rchar() -> int:
    line = next(x for x in Path("/proc/self/io").read_text().splitlines() if x.startswith("rchar:"))
    return int(line.split()[1])


# ------------------------------------------------------------------------------------------------ auth
BASE = {"checkpoint": "c", "index": "/data/index", "data": "d"}


def test_require_auth_without_keys_refuses_to_start_naming_where_keys_are_expected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bigearth.serving.args import AppArgs, NoApiKeysError

    monkeypatch.delenv("BIGEARTH_API_KEYS", raising=False)
    assert AppArgs.model_validate(BASE).keys() == set()  # local use: open, allowed
    with pytest.raises(
        NoApiKeysError, match=r"Secret 'bigearth-api-keys' \(key 'keys'.*BIGEARTH_API_KEYS.*api_keys_file"
    ):
        AppArgs.model_validate({**BASE, "require_auth": True}).keys()
    empty = tmp_path / "keys"
    empty.write_text("# no key yet\n\n")
    with pytest.raises(NoApiKeysError, match=f"api_keys_file '{empty}' holds no key"):
        AppArgs.model_validate({**BASE, "require_auth": True, "api_keys_file": str(empty)}).keys()
    monkeypatch.setenv("BIGEARTH_API_KEYS", "k1,k2")
    assert AppArgs.model_validate({**BASE, "require_auth": True}).keys() == {"k1", "k2"}


def test_the_ingress_and_a_local_serve_say_whether_the_api_is_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bigearth.cli import main
    from bigearth.cli.serve import open_api_notice
    from bigearth.serving.args import AppArgs
    from bigearth.serving.guard import auth_status

    monkeypatch.delenv("BIGEARTH_API_KEYS", raising=False)
    assert "open to anyone" in (open_api_notice(AppArgs.model_validate(BASE)) or "")
    keys = tmp_path / "keys"
    keys.write_text("k\n")
    assert open_api_notice(AppArgs.model_validate({**BASE, "api_keys_file": str(keys)})) is None
    assert auth_status(set()).startswith("auth OFF") and "open to anyone" in auth_status(set())
    assert auth_status({"a", "b"}).startswith("auth on: 2 API key(s)") and "a" not in auth_status({"a"})[8:20]
    # `bigearth serve --require-auth` without keys stops before anything starts, saying where keys go
    argv = ["serve", "--checkpoint", "c", "--index", str(tmp_path / "i"), "--data", "d", "--require-auth"]
    assert main(argv) != 0
    assert "bigearth-api-keys" in capsys.readouterr().err


def test_keys_are_compared_as_digests_and_only_as_x_api_key_or_bearer() -> None:
    """Each stored key is held as its SHA-256 (comparisons take the same time whatever the keys' lengths, and every
    key is compared); `Authorization` counts only with the Bearer scheme."""
    from starlette.datastructures import Headers

    from bigearth.serving.guard import authenticated, key_digests

    digests = key_digests({"short", "a-much-longer-second-key"})
    assert all(len(d) == 32 for d in digests) and b"short" not in b"".join(digests)

    def ok(**headers: str) -> bool:
        return authenticated(Headers({k.replace("_", "-"): v for k, v in headers.items()}), digests)

    assert ok(x_api_key="short") and ok(x_api_key="a-much-longer-second-key")
    assert ok(authorization="Bearer short") and ok(authorization="bearer a-much-longer-second-key")
    assert not ok(authorization="short")  # no scheme: not a key (it used to be taken as one)
    assert not ok(authorization="Basic short") and not ok(authorization="Bearer ") and not ok()
    assert not ok(x_api_key="shor") and not ok(x_api_key="short ") and not ok(x_api_key="")
    assert ok(x_api_key="", authorization="Bearer short")  # an empty X-API-Key does not hide the Bearer token
    assert not authenticated(Headers({"x-api-key": "short"}), [])  # auth off: nobody is known


def test_a_bad_content_length_is_refused_without_echoing_it() -> None:
    from bigearth.serving.guard import content_length_error

    limit = 1024
    assert content_length_error(None, limit) is None and content_length_error("1024", limit) is None
    for raw in ("<script>alert(1)</script>", "12abc", "-1", "\u00b2", "1" * 5000):
        err = content_length_error(raw, limit)
        assert err is not None and err.status == 413 and err.field == "body", raw
        assert raw not in err.message and "1024" in err.message, (raw, err.message)
    assert "invalid Content-Length" in content_length_error("12abc", limit).message  # type: ignore[union-attr]
    assert "1025 bytes" in content_length_error("1025", limit).message  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------ request bounds
def test_filter_lists_are_deduplicated_and_capped() -> None:
    f = SearchFilter(country=["Austria", "Austria", "Finland"], labels_any="Urban fabric", tile=["33UUP"] * 500)
    assert f.country == ["Austria", "Finland"] and f.labels_any == ["Urban fabric"] and f.tile == ["33UUP"]
    for field in ("country", "tile"):
        with pytest.raises(ValidationError, match=f"{MAX_FILTER_VALUES + 1} distinct values; at most") as e:
            SearchFilter.model_validate({field: [f"T{i}" for i in range(MAX_FILTER_VALUES + 1)]})
        assert e.value.errors()[0]["loc"] == (field,)
    with pytest.raises(ValidationError, match="a value of 5000 characters"):
        SearchFilter(country=["x" * 5000])
    with pytest.raises(ValidationError, match="at most 4096 items"):
        SearchRequest(vector=[0.0] * 5000)


def test_exact_search_is_bounded() -> None:
    assert SearchRequest(patch_id=_pid(0), k=MAX_EXACT_K, exact=True).exact
    with pytest.raises(ValidationError, match=f"exact search returns at most k={MAX_EXACT_K}") as e:
        SearchRequest(patch_id=_pid(0), k=MAX_EXACT_K + 1, exact=True)
    assert e.value.errors()[0]["loc"] == ("exact",)
    assert SearchRequest(patch_id=_pid(0), k=1000).k == 1000  # HNSW keeps its own bound


@settings(max_examples=60, deadline=2000, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["country", "tile", "labels_any", "split", "season"]),
        st.lists(st.text(max_size=80), max_size=90),
    )
)
def test_filter_fuzz_is_a_validation_error_or_a_bounded_filter(raw: dict[str, list[str]]) -> None:
    try:
        f = SearchFilter.model_validate(raw)
    except ValidationError:
        return
    for key in raw:
        values = getattr(f, key) or []
        assert len(values) == len(set(values)) <= MAX_FILTER_VALUES


# ------------------------------------------------------------------------------------------------ the Retriever
@pytest.fixture(scope="module")
def retriever(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from bigearth.retrieval import open_index
    from bigearth.retrieval.schema import payloads
    from bigearth.serving.retriever import Retriever

    target = tmp_path_factory.mktemp("limits") / "index"
    table = pq.read_table(shards / "train" / "part-00000.parquet", columns=[c for c in _META])
    rows = table.to_pydict()
    with open_index(str(target), "bigearthnet") as idx:
        idx.create({"fused": 8}, {"model": "unit", "num_classes": 19})
        vectors = np.random.default_rng(1).normal(size=(PAIRS, 8)).astype(np.float32)
        idx.upsert(rows["patch_id"], {"fused": vectors}, payloads(rows))
        idx.finish()
    r = Retriever(str(target), "bigearthnet", str(shards))
    yield r
    r.index.close()


_META = ["patch_id", *PAYLOAD_COLUMNS]  # what the indexer stores


class _Counting:
    """Counts the calls of one method of a real object, passing them through."""

    def __init__(self, obj: Any, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = getattr(obj, name)

        def counted(*a: Any, **k: Any) -> Any:
            self.calls += 1
            return real(*a, **k)

        monkeypatch.setattr(obj, name, counted)


def test_browse_totals_and_facets_are_counted_once_per_filter_not_per_page(
    retriever: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bigearth.serving.cache import TtlCache

    retriever.counts = TtlCache()
    count = _Counting(retriever.index, "count", monkeypatch)
    facet = _Counting(retriever.index, "facet", monkeypatch)
    cursor, seen, pages = None, 0, 0
    while True:
        page = retriever.browse({"filter": {"country": ["Austria"]}, "limit": 20, "cursor": cursor})
        seen, pages = seen + len(page["items"]), pages + 1
        assert page["total"] == PAIRS // 2
        if (cursor := page["next_cursor"]) is None:
            break
    assert seen == PAIRS // 2 and pages >= 7 and count.calls == 1  # counted on the first page only
    retriever.browse({"filter": {"country": ["Finland"]}, "limit": 5})
    assert count.calls == 2  # another filter is counted once too
    first = retriever.facets(["a"])
    assert retriever.facets(["a"]) == first and first["total"] == PAIRS and first["country"]["Austria"] == PAIRS // 2
    assert facet.calls == 4  # split, country, season, labels: once each, not once per request


def test_readyz_does_not_count_the_collection_on_every_call(retriever: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`/readyz` is open to anyone: its point count comes from the same cache as browse totals, not a scan a call;
    the answer keeps its shape."""
    from bigearth.serving.cache import TtlCache

    retriever.counts = TtlCache()
    count = _Counting(retriever.index, "count", monkeypatch)
    answers = [retriever.ready() for _ in range(20)]
    assert count.calls == 1 and all(a == answers[0] for a in answers)
    assert answers[0]["points"] == PAIRS and answers[0]["collection"] == "bigearthnet"
    assert set(answers[0]) == {"collection", "points", "vectors", "model", "pairs_in_shards"}
    assert retriever.facets([])["total"] == PAIRS and count.calls == 1  # the same cached total


#: what Qdrant's read-only API key allows that the Retriever uses (the service gets that key, infra/kuberay)
QDRANT_READS = {"get_aliases", "collection_exists", "get_collection", "get_collections", "query_points", "retrieve"}
QDRANT_READS |= {"count", "scroll", "facet", "close"}


def test_the_retriever_only_reads_from_qdrant(shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service holds Qdrant's read-only key: every client call it makes (start-up, readiness, search, browse,
    facets, following the live version's alias) must be a read."""
    from qdrant_client import QdrantClient

    from bigearth.retrieval import open_index
    from bigearth.retrieval.schema import payloads
    from bigearth.serving.retriever import Retriever

    target = f"qdrant-local:{tmp_path / 'qdrant'}"
    rows = pq.read_table(shards / "train" / "part-00000.parquet", columns=list(_META)).to_pydict()
    with open_index(target, "bigearthnet") as idx:
        idx.create({"fused": 8}, {"model": "unit", "num_classes": 19})
        idx.upsert(rows["patch_id"], {"fused": np.random.default_rng(2).normal(size=(PAIRS, 8))}, payloads(rows))
        idx.finish()
    called: set[str] = set()
    for name in [n for n in dir(QdrantClient) if not n.startswith("_") and callable(getattr(QdrantClient, n))]:
        real = getattr(QdrantClient, name)

        def recorded(self: Any, *a: Any, _name: str = name, _real: Any = real, **k: Any) -> Any:
            called.add(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(QdrantClient, name, recorded)
    r = Retriever(target, "bigearthnet", str(shards))
    r.recheck_s = 0.0  # look up the live version (the alias) on every access
    try:
        assert r.ready()["points"] == PAIRS
        assert r.search({"patch_id": _pid(3), "using": "fused", "k": 3}, None)["hits"]
        assert r.browse({"filter": {"country": ["Austria"]}, "limit": 5})["total"] == PAIRS // 2
        assert r.facets([])["total"] == PAIRS
    finally:
        r.index.close()
    assert {"get_aliases", "query_points", "count", "facet"} <= called  # recorded: the alias lookup and the reads
    assert called <= QDRANT_READS, sorted(called - QDRANT_READS)


def test_a_cached_count_expires() -> None:
    from bigearth.serving.cache import TtlCache

    now = [0.0]
    cache = TtlCache(ttl_s=10, entries=2, clock=lambda: now[0])
    assert cache.get("a", lambda: 1) == 1 and cache.get("a", lambda: 2) == 1
    now[0] = 11
    assert cache.get("a", lambda: 3) == 3
    cache.get("b", lambda: 0)
    cache.get("c", lambda: 0)  # two entries at most: "a" (least recently used) goes
    assert cache.get("a", lambda: 4) == 4
    cache.clear()
    assert cache.get("a", lambda: 5) == 5


def test_exact_search_is_refused_on_a_large_collection(retriever: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import bigearth.serving.retriever as deployments
    from bigearth.api.schemas import ApiError

    query = {"vector": [0.1] * 8, "k": 5, "exact": True}
    assert len(retriever.search(query, None)["hits"]) == 5
    monkeypatch.setattr(deployments, "EXACT_MAX_POINTS", PAIRS - 1)
    with pytest.raises(ApiError, match=f"exact search is refused on a collection of {PAIRS} points") as e:
        retriever.search(query, None)
    assert e.value.status == 422 and e.value.field == "exact"
    assert len(retriever.search({**query, "exact": False}, None)["hits"]) == 5


def test_a_404_does_not_reveal_where_the_shards_are(retriever: Any, shards: Path) -> None:
    from bigearth.api.schemas import ApiError

    with pytest.raises(ApiError) as e:
        retriever.patch_info("S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_99_99")
    assert e.value.status == 404 and "not in the shard set" in e.value.message
    assert str(shards) not in e.value.message and "shards" not in e.value.message.replace("shard set", "")


# ------------------------------------------------------------------------------------------------ PatchStore
def test_a_lookup_reads_one_row_not_a_row_group(shards: Path) -> None:
    from bigearth.shards.patches import PatchStore

    store = PatchStore(str(shards), cache_bytes=0)  # every lookup reads
    table = pq.read_table(shards / "train" / "part-00000.parquet")
    row_bytes = sum(b.nbytes for b in ALL_BANDS)
    for i in (0, 127, 128, 200, PAIRS - 1):
        store.arrays(_pid(i), ALL_GROUPS)  # warm: imports, the footer's first read
        before = _rchar()
        arrays = store.arrays(_pid(i), ALL_GROUPS)
        read = _rchar() - before
        assert read < 3 * PAGE_PAIRS * row_bytes, (i, read, row_bytes)  # one page a column; a row group: 128 rows
        for group, bands in ALL_GROUPS.items():
            for k, band in enumerate(bands):
                raw = np.frombuffer(table.column(band)[i].as_py(), dtype=arrays[group].dtype)
                assert np.array_equal(arrays[group][0, k].ravel(), raw), (i, band)
    assert store.metadata(_pid(200))["patch_id"] == _pid(200)


def test_shards_without_a_page_index_still_read_by_row_group(old_shards: Path, shards: Path) -> None:
    from bigearth.shards.patches import PatchStore

    old, new = PatchStore(str(old_shards)), PatchStore(str(shards))
    for i in (3, 150, PAIRS - 2):
        a, b = old.arrays(_pid(i), ALL_GROUPS), new.arrays(_pid(i), ALL_GROUPS)
        assert all(np.array_equal(a[g], b[g]) for g in ALL_GROUPS)
        assert old.metadata(_pid(i)) == new.metadata(_pid(i))


def test_the_cache_is_sized_in_bytes(shards: Path) -> None:
    from bigearth.shards.patches import PatchStore

    budget = 2 * 1024 * 1024
    store = PatchStore(str(shards), cache_bytes=budget)
    for i in range(0, PAIRS, 7):
        store.arrays(_pid(i), ALL_GROUPS)
        assert 0 < store.cached_bytes() <= budget
    assert store.cached_bytes() > budget // 2  # it is used, up to the budget
    store.arrays(_pid(7), {"s2_10m": GROUPS["s2_10m"]})
    before = _rchar()
    store.arrays(_pid(7), {"s2_10m": GROUPS["s2_10m"]})  # a repeated quicklook: from the cache, no file opened
    assert _rchar() - before < 4096


def test_a_damaged_page_is_a_shard_format_error_naming_file_and_column(shards: Path, tmp_path: Path) -> None:
    import shutil

    from bigearth.shards.format import ShardFormatError
    from bigearth.shards.pages import offset_index_locations, page_locations, read_footer
    from bigearth.shards.patches import PatchStore

    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    path = copy / "train" / "part-00000.parquet"
    data = bytearray(path.read_bytes())
    col = pq.ParquetFile(path).schema_arrow.get_field_index("B03")
    where = offset_index_locations(read_footer(lambda n, o: bytes(data[o : o + n]), len(data)))[1][col]
    assert where is not None
    page = page_locations(bytes(data[where[0] : where[0] + where[1]]))[5]  # rows 128 + 5 * PAGE_PAIRS onwards
    data[page.offset + page.size - 10] ^= 0xFF
    path.write_bytes(bytes(data))
    store = PatchStore(str(copy))
    with pytest.raises(ShardFormatError, match=r"part-00000.parquet: row group 1, column B03: .*checksum"):
        store.arrays(_pid(128 + 5 * PAGE_PAIRS + 1), {"s2_10m": GROUPS["s2_10m"]})
    next_page = _pid(128 + 6 * PAGE_PAIRS)
    assert store.arrays(next_page, {"s2_10m": GROUPS["s2_10m"]})["s2_10m"].shape == (1, 4, 120, 120)


@settings(max_examples=200, deadline=1000, derandomize=True)
@given(st.binary(max_size=300))
def test_the_page_index_parser_fuzz_fails_only_as_corrupt_or_unsupported(data: bytes) -> None:
    """Damaged footers, offset indexes and page headers: a CorruptPage / Unsupported, never a hang or another error."""
    from bigearth.shards.pages import PageLocation, offset_index_locations, page_locations, read_value

    for parse in (offset_index_locations, page_locations):
        with contextlib.suppress(CorruptPage):
            parse(data)
    # `data` as the one page of a column chunk of 3 rows, each value 8 bytes
    for codec in ("LZ4_RAW", "ZSTD", "UNCOMPRESSED"):
        try:
            value = read_value(lambda n, o: data[o : o + n], codec, [PageLocation(0, len(data), 0)], 3, 1, 8, 1)
        except (CorruptPage, Unsupported):
            continue
        assert value is None or len(value) == 8


def test_an_offset_index_reads_back() -> None:
    from bigearth.shards.pages import PageLocation, page_locations

    # OffsetIndex{page_locations: [PageLocation{offset 0, compressed_page_size 1000, first_row_index 0}]}
    assert page_locations(b"\x19\x1c\x16\x00\x15\xd0\x0f\x16\x00\x00\x00") == [PageLocation(0, 1000, 0)]


def _varint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([b])
        out += bytes([b | 0x80])


def test_a_huge_declared_map_of_bools_is_refused_at_once() -> None:
    """A map field (type 11) declaring 10**8 bool -> bool entries in 1 byte: bools in a map take a byte each, so
    the size cannot fit; it used to loop 10**8 times reading nothing (12 s; 10**12: hours)."""
    import time

    from bigearth.shards.pages import page_locations

    for size in (10**8, 10**12, 2**63):
        start = time.monotonic()
        with pytest.raises(CorruptPage, match="declares"):
            page_locations(b"\x2b" + _varint(size) + b"\x11")
        assert time.monotonic() - start < 0.1
    for head in (b"\x29\xf1", b"\x29\xfc"):  # lists of bools and of structs, same
        with pytest.raises(CorruptPage, match="declares"):
            page_locations(head + _varint(10**9) + b"\x00")


def _thrift_value(draw: Any, kind: int, depth: int) -> bytes:
    """Bytes for one value of thrift compact `kind`, often with declared sizes far beyond what follows."""
    size = st.one_of(st.sampled_from([10**8, 10**12, 2**31 - 1]), st.integers(0, 20), st.integers(0, 2**64))
    if kind in (1, 2):
        return b""
    if kind == 3:
        return bytes([draw(st.integers(0, 255))])
    if kind in (4, 5, 6):
        return _varint(draw(size))
    if kind == 7:
        return draw(st.binary(min_size=0, max_size=8))
    if kind == 8:
        return _varint(draw(size)) + draw(st.binary(max_size=8))
    if kind in (9, 10):
        inner = draw(st.sampled_from([1, 2, 12, 9, 11, 3, 4, 5, 6, 7, 8, 10] if depth < 4 else [1, 2, 3, 4, 5, 6, 7]))
        n = draw(size)
        elems = b"".join(_thrift_value(draw, 3 if inner in (1, 2) else inner, depth + 1) for _ in range(min(n, 3)))
        head = bytes([(min(n, 15) << 4) | inner]) + (_varint(n) if n >= 15 else b"")
        return head + elems
    if kind == 11:
        n, key, value = draw(size), draw(st.sampled_from([1, 2, 12, 8])), draw(st.sampled_from([1, 2, 12, 8]))
        return _varint(n) + (bytes([(key << 4) | value]) + draw(st.binary(max_size=4)) if n else b"")
    return _thrift_struct(draw, depth + 1)


def _thrift_struct(draw: Any, depth: int) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 4 if depth < 4 else 1))):
        kind = draw(st.sampled_from([9, 11, 12, 1, 2, 3, 4, 5, 6, 7, 8, 10, 13]))  # containers first
        fid = draw(st.sampled_from([6, 7, 9, 15, 1, 2, 3, 4, 5, 8]))  # fields the parsers skip come first
        out += bytes([(fid << 4) | kind]) + _thrift_value(draw, min(kind, 12), depth)
    return out + (b"\x00" if draw(st.booleans()) else b"")


@settings(max_examples=150, deadline=1000, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_structured_thrift_fuzz_fails_fast_only_as_corrupt_page(data: st.DataObject) -> None:
    """Thrift-shaped offset indexes, footers and page headers: nested lists, maps and structs whose declared sizes
    (varints up to 2**64) exceed what follows; every one parses or is a CorruptPage within the deadline."""
    from bigearth.shards.pages import PageLocation, offset_index_locations, page_locations, read_value

    blob = _thrift_struct(data.draw, 0)
    for parse in (offset_index_locations, page_locations):
        with contextlib.suppress(CorruptPage):
            parse(blob)
    with contextlib.suppress(CorruptPage, Unsupported):
        read_value(lambda n, o: blob[o : o + n], "ZSTD", [PageLocation(0, len(blob), 0)], 3, 1, 8, 1)


def test_a_page_without_a_checksum_is_read_through_the_verified_row_group(shards: Path, tmp_path: Path) -> None:
    """Shards with a page index but no page CRCs (not what the writer makes): the page reader does not read a page
    it cannot check (Unsupported), and the lookup reads the row group through pyarrow instead, right values."""
    from bigearth.core.storage import open_fs
    from bigearth.shards.format import SHARD_SCHEMA, Manifest
    from bigearth.shards.pages import offset_index_locations, page_locations, read_footer, read_value
    from bigearth.shards.patches import PatchStore

    out = tmp_path / "nocrc"
    (out / "train").mkdir(parents=True)
    path = out / "train" / "part-00000.parquet"
    table = pa.Table.from_pylist(list(_rows(PAIRS)), schema=SHARD_SCHEMA)
    pq.write_table(
        table, path, row_group_size=128, compression="lz4", write_page_index=True, max_rows_per_page=PAGE_PAIRS
    )
    manifest_shards = [{"path": "train/part-00000.parquet", "rows": PAIRS, "split": "train"}]
    Manifest(pairs=PAIRS, splits={"train": PAIRS}, shards=manifest_shards).save(open_fs(str(out))[0], str(out))
    data = path.read_bytes()
    col = table.schema.get_field_index("B02")
    where = offset_index_locations(read_footer(lambda n, o: data[o : o + n], len(data)))[0][col]
    assert where is not None
    pages = page_locations(data[where[0] : where[0] + where[1]])
    with pytest.raises(Unsupported, match="no checksum"):
        read_value(lambda n, o: data[o : o + n], "LZ4_RAW", pages, 128, 7, 120 * 120 * 2, 1)
    plain, nocrc = PatchStore(str(shards)), PatchStore(str(out))
    for i in (3, 150, PAIRS - 2):
        a, b = plain.arrays(_pid(i), ALL_GROUPS), nocrc.arrays(_pid(i), ALL_GROUPS)
        assert all(np.array_equal(a[g], b[g]) for g in ALL_GROUPS)


FLIPS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4)
FUZZ = settings(
    max_examples=150, deadline=2000, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(FLIPS)
def test_a_mutated_page_reads_back_right_or_is_refused(shards: Path, flips: list[tuple[int, int]]) -> None:
    """Bytes of a real page (header and data) changed: the right value, or CorruptPage / Unsupported."""
    _mutated_page(shards, "LZ4_RAW", flips)


@FUZZ
@given(FLIPS)
def test_a_mutated_uncompressed_page_reads_back_right_or_is_refused(
    plain_shards: Path, flips: list[tuple[int, int]]
) -> None:
    """The same for uncompressed pages, the default on local disks."""
    _mutated_page(plain_shards, "UNCOMPRESSED", flips)


def _mutated_page(shards: Path, codec: str, flips: list[tuple[int, int]]) -> None:
    from bigearth.shards.pages import offset_index_locations, page_locations, read_footer, read_value

    key = str(shards)
    data = _B02_FILE.get(key) or _B02_FILE.setdefault(key, (shards / "train" / "part-00000.parquet").read_bytes())
    col = pq.ParquetFile(shards / "train" / "part-00000.parquet").schema_arrow.get_field_index("B02")
    where = offset_index_locations(read_footer(lambda n, o: data[o : o + n], len(data)))[0][col]
    assert where is not None
    pages = page_locations(data[where[0] : where[0] + where[1]])
    page = pages[7]
    mutated = bytearray(data[page.offset : page.offset + page.size])
    for at, byte in flips:
        mutated[at % len(mutated)] = byte
    changed = bytes(mutated) != data[page.offset : page.offset + page.size]

    def read_at(n: int, o: int) -> bytes:
        if page.offset <= o < page.offset + page.size:
            return bytes(mutated[o - page.offset : o - page.offset + n])
        return data[o : o + n]

    width = 120 * 120 * 2
    try:
        value = read_value(read_at, codec, pages, 128, 7, width, 1)
    except (CorruptPage, Unsupported):
        assert changed
        return
    want = pq.read_table(shards / "train" / "part-00000.parquet", columns=["B02"]).column(0)[7].as_py()
    assert value == want  # a change the checksum lets through must not change the value (e.g. an unused field)


_B02_FILE: dict[str, bytes] = {}


def test_a_count_that_ends_after_a_switch_never_answers_for_the_new_version(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request counting on the old version stores its total after the switch cleared the cache: the next
    request, on the new version, must count the new one (before: the old total, until it expired)."""
    from bigearth.retrieval import open_index
    from bigearth.retrieval.schema import payloads
    from bigearth.serving.retriever import Retriever

    target = str(tmp_path / "index")
    rows = pq.read_table(shards / "train" / "part-00000.parquet", columns=list(_META)).to_pydict()
    vectors = np.random.default_rng(2).normal(size=(PAIRS, 8)).astype(np.float32)
    with open_index(target, "bigearthnet") as idx:
        idx.create({"fused": 8}, {"model": "unit", "num_classes": 19})
        idx.upsert(rows["patch_id"], {"fused": vectors}, payloads(rows))
        idx.finish()
    retriever = Retriever(target, "bigearthnet", str(shards))
    retriever.recheck_s = 0.0
    old = retriever.index
    with open_index(target, "bigearthnet") as idx:  # a re-index with fewer points, published
        builder = idx.rebuild({"fused": 8}, {"model": "unit", "num_classes": 19})
        half = {k: v[: PAIRS // 2] for k, v in rows.items()}
        builder.upsert(half["patch_id"], {"fused": vectors[: PAIRS // 2]}, payloads(half))
        builder.finish()
        builder.publish()
        builder.close()
    real_count = old.count

    def count_then_switch(flt: Any = None) -> int:  # the switch lands while this request counts
        n = real_count(flt)
        retriever._follow()
        return n

    monkeypatch.setattr(old, "count", count_then_switch)
    monkeypatch.setattr(retriever, "recheck_s", 3600.0)  # no switch but the one above
    assert retriever.browse({"limit": 1})["total"] == PAIRS  # answered from the old version, as it began
    assert retriever.index is not old
    assert retriever.browse({"limit": 1})["total"] == PAIRS // 2  # the new version's own count
    assert retriever.facets([])["total"] == PAIRS // 2
    retriever.index.close()
    old.close()
