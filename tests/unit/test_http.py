"""The service's HTTP surface in-process: the plain FastAPI application of `bigearth.serving.http` over the
in-process implementations of its interfaces (`bigearth.serving.local`): a random-init `tiny` model saved as a
checkpoint, a small shard set and an embedded index filled in-process with that model's vectors, the metrics hub.
Requests go through httpx's ASGI transport: no Ray, no server, no socket. Auth, body limits (Content-Length,
streamed, stalled), bad input as 4xx naming the field, error mapping, readiness, metrics and the web page; the
Serve wiring of the same application is tests/integration/test_serve.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bigearth.core.bands import ALL_BANDS, GROUPS
from bigearth.core.labels import BEN19

KEY = "unit-key-1"
SPLITS = ("train", "validation", "test")
PAIRS = 24  # 8 a split
LIMIT_MB = 1
UNKNOWN_ID = "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_99_99"  # well-formed, not in the shard set


def _pid(i: int) -> str:
    return f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{i // 100:02d}_{i % 100:02d}"


def _rows(split: str) -> Iterator[dict[str, Any]]:
    rng = np.random.default_rng(SPLITS.index(split))
    for i in range(SPLITS.index(split), PAIRS, len(SPLITS)):
        row: dict[str, Any] = {
            "patch_id": _pid(i),
            "s1_name": f"S1A_IW_GRDH_1SDV_20170613T165043_33UUP_{i // 100}_{i % 100}",
            "split": split,
            "labels": [BEN19[i % 19], BEN19[(i + 5) % 19]],
            "labels43": None,
            "country": ("Austria", "Finland")[i % 2],
            "tile": "33UUP",
            "s2_acquisition": dt.datetime(2017, 6, 13),
            "s1_acquisition": dt.datetime(2017, 6, 13),
            "epsg": 32633,
            "ulx": 404400.0 + 1200 * i,
            "uly": 5342400.0,
            "contains_seasonal_snow": False,
            "contains_cloud_or_shadow": False,
        }
        for b in ALL_BANDS:
            if b.dtype == "float32":
                row[b.name] = rng.normal(-15, 3, size=b.shape).astype(b.dtype).tobytes()
            else:
                row[b.name] = rng.integers(0, 4000, size=b.shape).astype(b.dtype).tobytes()
        yield row


def reference_map(i: int) -> np.ndarray | None:
    """The reference map (CLC codes) of pair `i` in a shard set written `maps=True`: the left half its first label,
    the right half its second, the top row no data (0) and the next one UNLABELED; none for every fifth pair."""
    from bigearth.core.labels import CLC_CODE_OF_19, CLC_UNLABELED

    if i % 5 == 0:
        return None
    codes = np.full((120, 120), CLC_CODE_OF_19[i % 19], np.uint16)
    codes[:, 60:] = CLC_CODE_OF_19[(i + 5) % 19]
    codes[0], codes[1] = 0, CLC_UNLABELED[0]
    return codes


def _write_shards(out: Path, maps: bool = False) -> Path:
    """The shard set (`maps`: with the reference-map column, `reference_map(i)` of pair i)."""
    from bigearth.core.storage import open_fs
    from bigearth.shards.format import Manifest, ShardWriter

    fs, _ = open_fs(str(out))
    entries, splits = [], {}
    for split in SPLITS:
        (out / split).mkdir(parents=True)
        writer = ShardWriter(fs, str(out / split / "part-00000.parquet"), reference_maps=maps)
        rows = list(_rows(split))
        for row in rows:
            if maps:
                codes = reference_map(int(row["patch_id"][-5:].replace("_", "")))
                row["reference_map"] = None if codes is None else codes.tobytes()
            writer.write(row)
        writer.close()
        entries.append({"path": f"{split}/part-00000.parquet", "rows": len(rows), "split": split})
        splits[split] = len(rows)
    Manifest(pairs=PAIRS, splits=splits, shards=entries).save(fs, str(out))
    return out


def _checkpoint(out: Path, fusion: str) -> Path:
    """A random-init `tiny` model written as a checkpoint, as training writes one."""
    import torch

    from bigearth.models.checkpoints import save
    from bigearth.models.registry import create_model

    torch.manual_seed(0)
    model: Any = create_model("tiny", num_classes=19, fusion=fusion)
    save(str(out), model, {"model": {"name": "tiny", "fusion": fusion}, "num_classes": 19})
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The shard set, the checkpoint, and every pair embedded by it into an embedded index (in this process)."""
    return build_service_files(tmp_path_factory.mktemp("http"))


def build_service_files(root: Path, maps: bool = False) -> dict[str, Any]:
    """Under `root`: the shard set (`maps`: with reference maps), the checkpoint, every pair embedded by it into an
    embedded index, and a keys file."""
    from bigearth.retrieval import open_index
    from bigearth.retrieval.schema import payloads
    from bigearth.serving.classifier import ModelClassifier
    from bigearth.shards.patches import PatchStore

    shards = _write_shards(root / "shards", maps)
    ck = _checkpoint(root / "ck", "late")
    model = ModelClassifier(str(ck))
    described = model.describe()
    store = PatchStore(str(shards))
    groups = {g: tuple(b) for g, b in described["groups"].items()}
    ids = {s: store.ids(s, 0, PAIRS) for s in SPLITS}
    every = [p for s in SPLITS for p in ids[s]]
    results = model.infer_batch([store.arrays(p, groups) for p in every])
    rows: dict[str, list[Any]] = {}
    for p in every:
        for k, v in store.metadata(p).items():
            rows.setdefault(k, []).append(v)
    with open_index(str(root / "index"), "bigearthnet") as idx:
        meta = {
            "model": {"name": "tiny", "fusion": "late"},
            "num_classes": 19,
            "vector_kinds": {n: v.kind for n, v in model.runner.spec.vectors.items()},
        }
        idx.create(described["vectors"], meta)
        vectors = {n: np.stack([r["vectors"][n] for r in results]).astype(np.float32) for n in described["vectors"]}
        idx.upsert(every, vectors, payloads(rows))
        idx.finish()
    keys = root / "api-keys"
    keys.write_text(f"# comment lines are not keys\n{KEY}\n")
    return {"shards": shards, "ck": ck, "index": root / "index", "keys": keys, "ids": ids, "described": described}


@pytest.fixture(scope="module")
def app(built: dict[str, Any]) -> Iterator[Any]:
    from bigearth.serving.args import AppArgs
    from bigearth.serving.local import create_local_app

    args = AppArgs(
        checkpoint=str(built["ck"]),
        index=str(built["index"]),
        data=str(built["shards"]),
        api_keys_file=str(built["keys"]),
        max_body_mb=LIMIT_MB,
        body_timeout_s=0.5,
    )
    application = create_local_app(args)
    yield application
    application.state.service.retriever.retriever.index.close()


@pytest.fixture(scope="module")
def ids(built: dict[str, Any]) -> dict[str, list[str]]:
    return dict(built["ids"])


def call(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request to `app` in this process (its own event loop)."""

    async def one() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://unit", timeout=30) as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(one())


H = {"X-API-Key": KEY}


def _tiff_bytes(shape: tuple[int, int]) -> bytes:
    from bigearth.archive.geotiff import encode

    return encode(np.ones(shape, dtype="uint16"), epsg=32633, ulx=404400.0, uly=5342400.0, res=10.0)


def _npz(arrays: dict[str, Any]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ the model
def test_classify_by_patch_id_equals_classify_of_the_uploaded_arrays(
    app: Any, ids: dict[str, list[str]], built: dict[str, Any]
) -> None:
    from bigearth.shards.patches import PatchStore

    pid = ids["test"][0]
    by_id = call(app, "POST", "/v1/classify", json={"patch_id": pid, "threshold": 0.3}, headers=H)
    assert by_id.status_code == 200, by_id.text
    arrays = PatchStore(str(built["shards"])).arrays(pid, {g: GROUPS[g] for g in ("s1", "s2_10m", "s2_20m")})
    files = [("p.npz", ("p.npz", _npz({g: a[0] for g, a in arrays.items()}), "application/zip"))]
    by_upload = call(app, "POST", "/v1/classify", files=files, headers=H, params={"threshold": 0.3})
    assert by_upload.status_code == 200, by_upload.text
    a, b = by_id.json(), by_upload.json()
    assert a["patch_id"] == pid and b["patch_id"] is None and list(a["probabilities"]) == list(BEN19)
    assert list(a["probabilities"].values()) == pytest.approx(list(b["probabilities"].values()), abs=1e-5)
    assert a["labels"] == [n for n, p in a["probabilities"].items() if p > 0.3] and a["threshold"] == 0.3
    assert a["model"]["name"] == "tiny/late" and "@" in a["model"]["version"]


def test_search_by_patch_id_by_vector_and_by_upload(app: Any, ids: dict[str, list[str]], built: dict[str, Any]) -> None:
    from bigearth.shards.patches import PatchStore

    pid = ids["train"][1]
    r = call(app, "POST", "/v1/search", json={"patch_id": pid, "k": 5, "filter": {"split": "train"}}, headers=H)
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert 0 < len(hits) <= 5 and pid not in [h["patch_id"] for h in hits]  # the query itself is left out
    assert all(h["payload"]["split"] == "train" for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # an uploaded S1 patch: its s1 vector is computed by the model, then searched with (as the archived one)
    arrays = PatchStore(str(built["shards"])).arrays(pid, {"s1": GROUPS["s1"]})
    files = [("p.npz", ("p.npz", _npz({"s1": arrays["s1"][0]}), "application/zip"))]
    up = call(app, "POST", "/v1/search", files=files, data={"request": '{"k": 1, "using": "s1"}'}, headers=H)
    assert up.status_code == 200, up.text
    assert up.json()["hits"][0]["patch_id"] == pid and up.json()["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    wrong = call(app, "POST", "/v1/search", files=files, data={"request": '{"k": 1, "using": "s2"}'}, headers=H)
    assert wrong.status_code == 422 and wrong.json()["field"] == "bands"  # S2 bands are not in an S1 upload
    with_id = call(app, "POST", "/v1/search", files=files, data={"request": json.dumps({"patch_id": pid})}, headers=H)
    assert with_id.status_code == 422 and with_id.json()["field"] == "request"


def test_an_early_fusion_model_is_told_apart_by_its_spec_not_its_name(tmp_path: Path) -> None:
    """`ModelSpec.early_fusion` (derived from bands and vectors, nothing new saved: old checkpoints load as they
    are); an upload asking an early-fusion model for one modality's vector is a 422 that says why."""
    from bigearth.api.schemas import ApiError
    from bigearth.models.base import ModelSpec
    from bigearth.serving.classifier import ModelClassifier
    from bigearth.serving.routes import groups_for

    early = ModelClassifier(str(_checkpoint(tmp_path / "early", "early"))).describe()
    late = ModelClassifier(str(_checkpoint(tmp_path / "late", "late"))).describe()
    assert early["early_fusion"] is True and late["early_fusion"] is False
    with pytest.raises(ApiError) as e:
        groups_for(early, "s1", "query_modality")
    assert e.value.status == 422 and e.value.field == "query_modality"
    assert str(e.value).startswith("this model makes no 's1' vectors; it makes ['fused'] (an early-fusion model")
    assert groups_for(late, "s1", "using") == {"s1": ("VV", "VH")}
    spec = ModelClassifier(str(tmp_path / "early")).runner.spec.to_dict()
    assert "early_fusion" not in spec  # a property of what the spec says, not a saved field
    assert ModelSpec.from_dict({**spec, "name": "renamed"}).early_fusion  # the name plays no part
    assert ModelSpec.from_dict({**spec, "vectors": {}}).early_fusion  # saved without vectors: its builder says
    assert not ModelSpec.from_dict({**spec, "bands": ["VV", "VH"], "vectors": {}, "name": "s1"}).early_fusion


# ------------------------------------------------------------------------------------------------ bad input
#: a patch id of the right form (the pattern of the OpenAPI document) whose request is refused for something else
WELL_FORMED = "S2A_MSIL2A_20170613T101031_87_48"
BAD_REQUESTS: dict[str, tuple[str, Any, int, str | None, str]] = {
    "wrong band size": (
        "classify-files",
        [("B02", ("x_B02.tif", b"@size60", "image/tiff"))],
        422,
        "B02",
        "expected 120x120",
    ),
    "missing bands": ("classify-files", [("B02", ("x_B02.tif", b"@good", "image/tiff"))], 422, "bands", "missing"),
    "not a tiff": (
        "classify-files",
        [("B03", ("x_B03.tif", b"hello, not a tiff", "image/tiff"))],
        422,
        "B03",
        "not a readable GeoTIFF",
    ),
    "corrupt npz": (
        "classify-files",
        [("p.npz", ("p.npz", b"PK\x03\x04broken", "application/zip"))],
        422,
        "npz",
        "not a readable .npz",
    ),
    "unnamed band file": (
        "classify-files",
        [("file", ("photo.tif", b"x", "image/tiff"))],
        422,
        "file",
        "cannot tell which band",
    ),
    "unknown patch id": ("classify-json", {"patch_id": UNKNOWN_ID}, 404, "patch_id", "not in the shard set"),
    "malformed patch id": ("classify-json", {"patch_id": "../../etc/passwd"}, 422, "patch_id", "not a valid patch id"),
    "bad threshold": ("classify-json", {"patch_id": WELL_FORMED, "threshold": 3}, 422, "threshold", "less than 1"),
    "bad json": ("classify-raw", b"{not json", 422, None, "Invalid JSON"),
    "wrong content type": ("classify-text", b"hello", 415, "content-type", "multipart/form-data"),
    "k out of range": ("search", {"patch_id": WELL_FORMED, "k": 5000}, 422, "k", "less than or equal to 1000"),
    "k zero": ("search", {"patch_id": WELL_FORMED, "k": 0}, 422, "k", "greater than or equal to 1"),
    "malformed filter": (
        "search",
        {"patch_id": WELL_FORMED, "filter": {"colour": "red"}},
        422,
        "filter.colour",
        "Extra inputs",
    ),
    "unknown label": (
        "search",
        {"patch_id": WELL_FORMED, "filter": {"labels_any": ["Moon base"]}},
        422,
        "filter.labels_any",
        "unknown label",
    ),
    "43-class label on a 19-class index": (
        "search",
        {"patch_id": "PID", "filter": {"labels_any": ["Rice fields"]}},
        422,
        "filter",
        "19-class",
    ),
    "bad date range": (
        "search",
        {"patch_id": WELL_FORMED, "filter": {"date_from": "2018-01-01", "date_to": "2017-01-01"}},
        422,
        "filter",
        "after date_to",
    ),
    "unknown search patch": ("search", {"patch_id": UNKNOWN_ID}, 404, "patch_id", "not in the index"),
    "vector of the wrong length": (
        "search",
        {"vector": [0.1, 0.2], "using": "s1"},
        422,
        "vector",
        "expected @S1 finite numbers",
    ),
    "no query": ("search", {"k": 3}, 422, "patch_id", "give a patch_id or a vector"),
    "too many filter values": (
        "search",
        {"patch_id": "PID", "filter": {"tile": [f"T{i}" for i in range(65)]}},
        422,
        "filter.tile",
        "65 distinct values; at most 64",
    ),
    "exact search beyond its k": (
        "search",
        {"patch_id": "PID", "k": 500, "exact": True},
        422,
        "exact",
        "at most k=100",
    ),
    "search with another content type": ("search-text", b"hello", 415, "content-type", "application/json"),
    "quicklook scale out of range": ("rgb", "scale=99", 422, "scale", "less than or equal to 8"),
    "quicklook of an unknown patch": ("rgb-unknown", "scale=1", 404, "patch_id", "not in the shard set"),
    "unknown split": ("patches", "split=holdout", 422, "split", "Input should be"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_a_4xx_naming_the_field(
    app: Any, case: str, ids: dict[str, list[str]], built: dict[str, Any]
) -> None:
    kind, payload, status, field, message = BAD_REQUESTS[case]
    message = message.replace("@S1", str(built["described"]["vectors"]["s1"]))
    pid = ids["train"][0]
    if kind == "classify-files":
        files = []
        for name, (fname, data, ctype) in payload:
            if data == b"@size60":
                data = _tiff_bytes((60, 60))
            elif data == b"@good":
                data = _tiff_bytes((120, 120))
            files.append((name, (fname, data, ctype)))
        r = call(app, "POST", "/v1/classify", files=files, headers=H)
    elif kind == "classify-json":
        r = call(app, "POST", "/v1/classify", json=payload, headers=H)
    elif kind == "classify-raw":
        r = call(app, "POST", "/v1/classify", content=payload, headers={**H, "content-type": "application/json"})
    elif kind in ("classify-text", "search-text"):
        path = "/v1/classify" if kind == "classify-text" else "/v1/search"
        r = call(app, "POST", path, content=payload, headers={**H, "content-type": "text/plain"})
    elif kind == "search":
        body = json.loads(json.dumps(payload).replace('"PID"', json.dumps(pid)))
        r = call(app, "POST", "/v1/search", json=body, headers=H)
    elif kind == "patches":
        r = call(app, "GET", f"/v1/patches?{payload}", headers=H)
    else:
        target = pid if kind == "rgb" else UNKNOWN_ID
        r = call(app, "GET", f"/v1/patches/{target}/rgb.png?{payload}", headers=H)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "message", "field"}
    assert body["field"] == field and message in body["message"], body
    assert str(built["shards"]) not in body["message"]  # a 404 names the patch, not where the shards are
    assert call(app, "GET", "/healthz").status_code == 200


def _multipart(files: list[Any], media_type: str) -> dict[str, Any]:
    """A multipart body as httpx encodes it, sent under `media_type` (its boundary parameter kept)."""
    encoded = httpx.Request("POST", "http://unit", files=files)
    _, _, params = encoded.headers["content-type"].partition(";")
    return {"content": encoded.read(), "headers": {**H, "content-type": f"{media_type};{params}"}}


def test_the_content_type_is_matched_by_its_media_type(app: Any, ids: dict[str, list[str]]) -> None:
    """Case-insensitive, the media type before `;`, exactly: `Application/JSON` and a charset are JSON,
    `application/jsonx` is not; the 415 shows the JSON body as it is sent."""
    pid = ids["train"][0]
    body = json.dumps({"patch_id": pid}).encode()
    expected = call(app, "POST", "/v1/classify", json={"patch_id": pid}, headers=H).json()
    for ctype in ("Application/JSON", "application/json; charset=utf-8", " APPLICATION/json ;charset=UTF-8"):
        r = call(app, "POST", "/v1/classify", content=body, headers={**H, "content-type": ctype})
        assert r.status_code == 200 and r.json() == expected, (ctype, r.text)
        search = {"patch_id": pid, "k": 2}
        r = call(app, "POST", "/v1/search", content=json.dumps(search).encode(), headers={**H, "content-type": ctype})
        assert r.status_code == 200 and r.json()["hits"], (ctype, r.text)
    for path in ("/v1/classify", "/v1/search"):
        r = call(app, "POST", path, content=body, headers={**H, "content-type": "application/jsonx"})
        assert r.status_code == 415 and r.json()["field"] == "content-type", (path, r.text)
        assert "'application/jsonx'" in r.json()["message"]
    message = call(app, "POST", "/v1/classify", content=body, headers={**H, "content-type": "text/plain"}).json()
    assert 'application/json ({"patch_id": ...})' in message["message"] and "{{" not in message["message"]
    b = {f"B0{i}": np.full((120, 120), 100 * i, np.uint16) for i in (2, 3, 4, 8)}
    files = [("q.npz", ("q.npz", _npz(b), "application/zip"))]
    r = call(app, "POST", "/v1/quicklook", **_multipart(files, "Multipart/Form-Data"))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    r = call(app, "POST", "/v1/quicklook", **_multipart(files, "multipart/form-datax"))
    assert r.status_code == 415 and r.json()["field"] == "content-type", r.text


def test_a_band_that_names_a_file_or_a_url_reaches_neither(app: Any, tmp_path: Path) -> None:
    """Issue 22: VRT and WMS XML as bands of classify, search and quicklook uploads are 422s naming the band; no
    byte of the local file a VRT names comes back, and nothing connects to the listener the others name."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"BIGEARTH-SECRET-" * 2000)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    raw = '<VRTRasterBand dataType="UInt16" band="1" subClass="VRTRawRasterBand"><SourceFilename>{}</SourceFilename>'
    remote = '<VRTRasterBand dataType="UInt16" band="1"><SimpleSource><SourceFilename>{}</SourceFilename>'
    bands = [
        f'<VRTDataset rasterXSize="120" rasterYSize="120">{raw.format(secret)}</VRTRasterBand></VRTDataset>',
        f'<VRTDataset rasterXSize="120" rasterYSize="120">{remote.format(f"/vsicurl/http://127.0.0.1:{port}/b.tif")}'
        "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>",
        f'<GDAL_WMS><Service name="TMS"><ServerUrl>http://127.0.0.1:{port}/${{z}}/${{x}}/${{y}}.png</ServerUrl>'
        "</Service><DataWindow><UpperLeftX>0</UpperLeftX><UpperLeftY>1200</UpperLeftY><LowerRightX>1200"
        "</LowerRightX><LowerRightY>0</LowerRightY><TileLevel>0</TileLevel><TileCountX>1</TileCountX><TileCountY>1"
        "</TileCountY><SizeX>120</SizeX><SizeY>120</SizeY></DataWindow><BandsCount>1</BandsCount>"
        "<DataType>UInt16</DataType></GDAL_WMS>",
    ]
    try:
        for band in bands:
            files = [(b, (f"x_{b}.tif", _tiff_bytes((120, 120)), "image/tiff")) for b in ("B03", "B04")]
            files.append(("B02", ("x_B02.tif", band.encode(), "image/tiff")))
            for route, extra in (("classify", {}), ("search", {"request": '{"k": 3}'}), ("quicklook", {})):
                r = call(app, "POST", f"/v1/{route}", files=files, data=extra, headers=H)
                assert r.status_code == 422 and r.json()["field"] == "B02", (route, r.text)
                assert "not a TIFF file" in r.json()["message"] and b"SECRET" not in r.content, (route, r.text)
        with pytest.raises(BlockingIOError):  # a connection would wait here, accepted by the kernel
            listener.accept()
    finally:
        listener.close()


# ------------------------------------------------------------------------------------------------ auth, limits
def test_body_over_the_limit_and_auth(app: Any, ids: dict[str, list[str]]) -> None:
    big = [("B02", ("x_B02.tif", b"\0" * ((LIMIT_MB + 1) * 1024 * 1024), "image/tiff"))]
    r = call(app, "POST", "/v1/classify", files=big, headers=H)
    assert r.status_code == 413 and r.json()["field"] == "body"
    pid = ids["train"][0]
    r = call(app, "POST", "/v1/search", json={"patch_id": pid})
    assert r.status_code == 401 and r.json()["field"] == "X-API-Key"
    assert call(app, "POST", "/v1/search", json={"patch_id": pid}, headers={"X-API-Key": "wrong"}).status_code == 401
    r = call(app, "POST", "/v1/search", json={"patch_id": pid}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    r = call(app, "POST", "/v1/search", json={"patch_id": pid}, headers={"Authorization": KEY})
    assert r.status_code == 401  # the key without the Bearer scheme is no key
    r = call(app, "GET", "/v1/search", headers=H)
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"  # as the document lists it
    r = call(app, "DELETE", "/v1/search", headers=H)  # Starlette's own answers are the error model too
    assert r.status_code == 405 and "POST" in r.headers["allow"] and "DELETE" in r.json()["message"]
    r = call(app, "GET", "/v1/nothing-here", headers=H)
    assert r.status_code == 404 and set(r.json()) == {"error", "message", "field"}, r.text
    assert call(app, "GET", "/healthz").json() == {"status": "ok"}  # health needs no key
    for path in ("/healthzz", "/metrics/x", "/docs-private", "/readyz.json", "/openapi.json/../v1/search"):
        assert call(app, "GET", path).status_code == 401, path  # exact paths only, not prefixes
    assert call(app, "GET", "/docs").status_code == 200
    assert call(app, "GET", "/openapi.json").json()["paths"].keys() >= {
        "/v1/classify",
        "/v1/search",
        "/v1/patches/{patch_id}",
    }
    for raw in ("12abc", "99999999999999999999999", str(LIMIT_MB * 1024 * 1024 + 1)):  # checked before the body
        r = call(app, "POST", "/v1/search", content=b"{}", headers={**H, "content-length": raw})
        assert r.status_code == 413 and r.json()["field"] == "body" and raw not in r.json()["message"][:5], raw


def test_a_chunked_body_stops_at_the_limit_while_it_streams(app: Any) -> None:
    """No Content-Length: the body is counted as it arrives and answered 413 at the limit, its rest never read."""
    sent = []

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):  # 16 MiB if all read
            sent.append(1)
            yield b"\0" * (256 * 1024)

    headers = {**H, "content-type": "multipart/form-data; boundary=b"}
    r = call(app, "POST", "/v1/classify", content=chunks(), headers=headers)
    assert r.status_code == 413 and r.json()["field"] == "body" and "over the limit" in r.json()["message"], r.text
    assert len(sent) <= LIMIT_MB * 4 + 2, len(sent)  # read up to the limit, not the whole body


def test_a_stalled_body_times_out_with_a_408(app: Any) -> None:
    async def stalls() -> AsyncIterator[bytes]:
        yield b'{"patch_id": '
        await asyncio.sleep(30)
        yield b"}"

    t = time.monotonic()
    r = call(app, "POST", "/v1/search", content=stalls(), headers={**H, "content-type": "application/json"})
    assert r.status_code == 408 and r.json()["field"] == "body", r.text
    assert "nothing received for 0.5 s" in r.json()["message"]
    assert time.monotonic() - t < 10  # the body timeout, not the stall


def test_a_multipart_body_of_thousands_of_parts_is_refused(app: Any) -> None:
    part = '--b\r\nContent-Disposition: form-data; name="f{i}"; filename="f{i}.tif"\r\n\r\nx\r\n'
    parts = "".join(part.format(i=i) for i in range(5000))
    r = call(
        app,
        "POST",
        "/v1/classify",
        content=(parts + "--b--\r\n").encode(),
        headers={**H, "content-type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 400 and r.json()["field"] == "body" and "Too many files" in r.json()["message"], r.text


def test_an_app_that_requires_auth_is_not_made_without_keys(built: dict[str, Any], monkeypatch: Any) -> None:
    from bigearth.serving.args import AppArgs, NoApiKeysError
    from bigearth.serving.http import create_app
    from bigearth.serving.local import LocalMetrics

    monkeypatch.delenv("BIGEARTH_API_KEYS", raising=False)
    args = AppArgs(checkpoint="c", index=str(built["index"]), data="d", require_auth=True)
    with pytest.raises(NoApiKeysError):
        create_app(None, None, LocalMetrics(), args)  # type: ignore[arg-type]  # refused before any is used


def test_a_500_names_an_error_id_in_the_log_not_the_exception(caplog: pytest.LogCaptureFixture) -> None:
    from bigearth.serving.guard import internal_error

    try:
        raise KeyError("/secret/path/of/the/server token=abc")
    except KeyError as e:
        with caplog.at_level("ERROR", logger="bigearth.serve"):
            body, error_id = internal_error(e, "/v1/classify")
    assert set(body) == {"error", "message", "field"} and error_id in body["message"]
    assert "secret" not in json.dumps(body) and "KeyError" not in json.dumps(body)
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None and "secret" in str(logged[0].exc_info[1])


def test_an_app_without_its_service_answers_503_starting_up() -> None:
    from bigearth.serving.http import build_api

    r = call(build_api(), "GET", "/healthz")
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["message"] == "starting up"


class _Restarting:
    """A `Retriever` whose backend is restarting (what `HandleRetriever` raises while Serve replaces a replica):
    every call is `Unavailable`."""

    def __getattr__(self, name: str) -> Any:
        from bigearth.serving.interfaces import Unavailable

        async def unavailable(*args: Any) -> Any:
            raise Unavailable(f"{name}: the replica is restarting")

        return unavailable


def test_a_backend_that_is_restarting_is_a_503_with_retry_after(built: dict[str, Any]) -> None:
    from bigearth.serving.args import AppArgs
    from bigearth.serving.classifier import ModelClassifier
    from bigearth.serving.http import create_app
    from bigearth.serving.local import LocalClassifier, LocalMetrics

    args = AppArgs(checkpoint=str(built["ck"]), index=str(built["index"]), data=str(built["shards"]))
    app = create_app(LocalClassifier(ModelClassifier(str(built["ck"]))), _Restarting(), LocalMetrics(), args)
    r = call(app, "GET", "/v1/patches")
    assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    assert r.json() == {
        "error": "unavailable",
        "message": "a model or index replica is restarting; retry shortly",
        "field": None,
    }
    r = call(app, "POST", "/v1/search", json={"patch_id": _pid(0)})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    ready = call(app, "GET", "/readyz")  # not ready is an answer: the Ready body
    assert ready.status_code == 503 and ready.json()["ready"] is False
    assert call(app, "GET", "/healthz").status_code == 200


# ------------------------------------------------------------------------------------------------ probes, metrics
def test_readiness_tells_what_is_served_only_to_a_caller_with_a_key(app: Any, built: dict[str, Any]) -> None:
    anonymous = call(app, "GET", "/readyz")  # a probe: ready or not, nothing about what is served
    assert anonymous.status_code == 200 and anonymous.json() == {
        "ready": True,
        "model": None,
        "index": None,
        "detail": None,
    }
    wrong = call(app, "GET", "/readyz", headers={"X-API-Key": "wrong"}).json()
    assert wrong["model"] is None and built["ck"].name not in json.dumps(wrong)
    ready = call(app, "GET", "/readyz", headers=H).json()
    assert ready["ready"] and ready["model"]["name"] == "tiny/late" and ready["model"]["classes"] == list(BEN19)
    assert ready["index"]["points"] == ready["index"]["pairs_in_shards"] == PAIRS


def test_metrics_count_requests_by_route_and_status_and_batch_sizes(app: Any, ids: dict[str, list[str]]) -> None:
    call(app, "POST", "/v1/classify", json={"patch_id": ids["validation"][1]}, headers=H)
    call(app, "POST", "/v1/search", json={"k": 3}, headers=H)  # a 422
    text = call(app, "GET", "/metrics").text
    assert _metric(text, 'bigearth_requests_total{route="/v1/search",status="422"}') > 0
    assert _metric(text, 'bigearth_requests_total{route="/v1/classify",status="200"}') > 0
    assert _metric(text, "bigearth_classifier_batch_size_count") >= 1
    assert _metric(text, "bigearth_ingress_replicas_reporting") == 1
    assert 'status="500"' not in text


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


# ------------------------------------------------------------------------------------------------ the archive
def test_patches_metadata_quicklooks_browse_and_facets(app: Any, ids: dict[str, list[str]]) -> None:
    from PIL import Image

    page = call(app, "GET", "/v1/patches", params={"split": "train", "limit": 3, "offset": 2}, headers=H).json()
    assert page["patch_ids"] == ids["train"][2:5] and page["total"] == len(ids["train"])
    r = call(app, "GET", "/v1/patches", params={"offset": 2497415803784417771520}, headers=H)
    assert r.status_code == 422 and r.json()["field"] == "offset", r.text  # was a 500
    r = call(app, "GET", "/v1/patches", params={"offset": 10**9, "limit": 5}, headers=H)
    assert r.status_code == 200 and r.json()["patch_ids"] == [], r.text  # the bound itself: an empty page
    pid = ids["train"][3]
    info = call(app, "GET", f"/v1/patches/{pid}", headers=H).json()
    assert info["patch_id"] == pid and info["split"] == "train" and info["s2_acquisition"].endswith("Z")
    for wrong_id in ("S2A_x", "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48", UNKNOWN_ID.lower()):
        r = call(app, "GET", f"/v1/patches/{wrong_id}/rgb.png", headers=H)
        assert r.status_code == 422 and r.json()["field"] == "patch_id", r.text
        assert "not a valid patch id: expected" in r.json()["message"] and "(v2)" in r.json()["message"]
    png = call(app, "GET", f"/v1/patches/{pid}/rgb.png", params={"scale": 2}, headers=H)
    assert png.headers["content-type"] == "image/png" and Image.open(_bytes(png.content)).size == (240, 240)
    facets = call(app, "GET", "/v1/facets", headers=H).json()
    assert facets["total"] == PAIRS == sum(facets["split"].values()) and facets["classes"] == list(BEN19)
    body = {"filter": {"country": ["Austria"], "split": ["train"]}, "limit": 2}
    seen: list[str] = []
    while True:
        r = call(app, "POST", "/v1/browse", json=body, headers=H).json()
        seen += [i["patch_id"] for i in r["items"]]
        body["cursor"] = r["next_cursor"]
        if body["cursor"] is None:
            break
    assert len(seen) == r["total"] == len(set(seen)) > 0
    bad = call(app, "POST", "/v1/browse", json={"cursor": "not-a-point-id"}, headers=H)
    assert bad.status_code == 422 and bad.json()["field"] == "cursor"
    bad = call(app, "POST", "/v1/browse", json={"filter": {"season": ["monsoon"]}}, headers=H)
    assert bad.status_code == 422 and bad.json()["field"].startswith("filter.season")
    b = {f"B0{i}": np.full((120, 120), 100 * i, np.uint16) for i in (2, 3, 4, 8)}
    files = [("q.npz", ("q.npz", _npz(b), "application/zip"))]
    quick = call(app, "POST", "/v1/quicklook", files=files, headers=H)
    assert quick.status_code == 200 and Image.open(_bytes(quick.content)).size == (120, 120)
    s1_only = call(app, "POST", "/v1/quicklook", files=[("v.npz", ("v.npz", _npz({}), "application/zip"))], headers=H)
    assert s1_only.status_code == 422 and s1_only.json()["field"] == "bands" and "B04" in s1_only.json()["message"]
    text = call(app, "POST", "/v1/quicklook", content=b"x", headers={**H, "content-type": "text/plain"})
    assert text.status_code == 415 and text.json()["field"] == "content-type"


def _bytes(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


# ------------------------------------------------------------------------------------------------ the web page
def test_the_page_is_served_from_the_package_with_a_same_origin_policy(app: Any) -> None:
    import re

    page = call(app, "GET", "/")  # no API key: the page asks for one before it calls the API
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    linked = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert linked and all(x.startswith(("/web/", "#", "data:")) for x in linked), linked  # nothing from elsewhere
    for path in [x for x in linked if x.startswith("/web/")] + ["/web/countries.geojson"]:
        r = call(app, "GET", path)
        assert r.status_code == 200 and r.content, path
    assert call(app, "GET", "/web/missing.js").status_code == 401  # only the page's own files are open
    assert call(app, "GET", "/web/missing.js", headers=H).status_code == 404
    assert call(app, "GET", "/web/index.html", headers=H).status_code == 404  # the page is at /
    assert call(app, "GET", "/web/..%2Fserving%2Fapp.py", headers=H).status_code == 404
    assert call(app, "GET", "/v1/facets").status_code == 401  # the API itself still needs the key
    js = call(app, "GET", "/web/app.js").text
    assert "http://" not in js.replace("http://www.w3.org/2000/svg", "") and "https://" not in js


# ------------------------------------------------------------------------------------------------ no Ray
def _imports(path: Path) -> set[str]:
    """Every module a source file imports, at its top or inside a function."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_http_application_and_the_upload_parsing_import_no_ray() -> None:
    """The plain app (and the in-process implementations, the Ray-free Retriever and model) never import Ray nor
    the Serve wrapper; upload parsing (shared by the SDK and the server) imports nothing of the server; the SDK
    only the API's modules and the foundations."""
    from helpers import REPO

    pkg = REPO / "platform" / "bigearth"
    plain = ["http", "routes", "service", "guard", "openapi", "bodies", "interfaces", "local", "classifier"]
    plain += ["retriever", "metrics", "web", "args", "cache"]
    serve_side = {"bigearth.serving.ingress", "bigearth.serving.deployments", "bigearth.serving.app"}
    for name in plain:
        used = _imports(pkg / "serving" / f"{name}.py")
        assert not [m for m in used if m == "ray" or m.startswith("ray.") or m in serve_side], name
    for path in (pkg / "api").glob("*.py"):
        used = _imports(path)
        assert not [m for m in used if m.split(".")[0] in ("ray", "fastapi", "starlette")], path.name
        assert not [m for m in used if m.startswith("bigearth.serving")], path.name
    sdk = {m for m in _imports(pkg / "client.py") if m.startswith("bigearth")}
    assert all(m.startswith(("bigearth.api.", "bigearth.core.")) for m in sdk), sdk


# ------------------------------------------------------------------------------------------------ arguments
def test_app_args_refuse_secrets_and_unknown_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from bigearth.serving.app import AppArgs

    base = {"checkpoint": "c", "index": "/data/index", "data": "d"}
    with pytest.raises(ValidationError, match=r"api_keys: keys are not arguments .* BIGEARTH_API_KEYS"):
        AppArgs.model_validate({**base, "api_keys": ["k"]})
    with pytest.raises(ValidationError, match=r"qdrant_api_key: keys are not arguments .* QDRANT_API_KEY"):
        AppArgs.model_validate({**base, "qdrant_api_key": "k"})
    with pytest.raises(ValidationError, match="max_batch"):
        AppArgs.model_validate({**base, "max_batch": 8})  # a typo is refused, not ignored
    keys = tmp_path / "keys"
    keys.write_text("a\n\n  b  \n")
    monkeypatch.setenv("BIGEARTH_API_KEYS", "c,")
    assert AppArgs.model_validate({**base, "api_keys_file": str(keys)}).keys() == {"a", "b", "c"}
    with pytest.raises(RuntimeError, match="api_keys_file: cannot read '/nonexistent/keys' on this node"):
        AppArgs.model_validate({**base, "api_keys_file": "/nonexistent/keys"}).keys()


def test_app_args_refuse_two_readers_of_one_embedded_index() -> None:
    from pydantic import ValidationError

    from bigearth.serving.app import AppArgs

    with pytest.raises(ValidationError, match="opened by one process"):
        AppArgs(checkpoint="c", index="/data/index", data="d", retriever_replicas=2)
    assert AppArgs(checkpoint="c", index="http://qdrant:6333", data="d", retriever_replicas=2).retriever_replicas == 2
