"""Land-cover maps over HTTP in-process: `POST /v1/segment` (by patch id, by upload, JSON or PNG) and
`GET /v1/patches/{id}/reference.png`, on the plain FastAPI application over `bigearth.serving.local` (a random-init
`seg-tiny` beside the `tiny` classifier of tests/unit/test_http.py, a small shard set with reference maps and its
embedded index); a service without a segmentation model or without maps says so. No Ray, no server, no socket; the
Serve wiring is tests/integration/test_serve.py."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bigearth.core.labels import BEN19, BEN19_COLOURS, IGNORE_INDEX, reference_targets
from helpers import random_checkpoint
from unit.test_class_maps import _decode
from unit.test_http import KEY, LIMIT_MB, UNKNOWN_ID, H, _npz, build_service_files, call, reference_map


def _args(built: dict[str, Any], **extra: Any) -> Any:
    from bigearth.serving.args import AppArgs

    return AppArgs(
        checkpoint=str(built["ck"]),
        index=str(built["index"]),
        data=str(built["shards"]),
        api_keys_file=str(built["keys"]),
        max_body_mb=LIMIT_MB,
        body_timeout_s=0.5,
        **extra,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("seg-http")
    files = build_service_files(root, maps=True)
    files["seg"] = random_checkpoint(root / "seg", "seg-tiny", model_kwargs={"fusion": "late"})
    return files


@pytest.fixture(scope="module")
def app(built: dict[str, Any]) -> Iterator[Any]:
    from bigearth.serving.local import create_local_app

    application = create_local_app(_args(built, segmentation_checkpoint=str(built["seg"])))
    yield application
    application.state.service.retriever.retriever.index.close()


@pytest.fixture(scope="module")
def segmenter(built: dict[str, Any]) -> Any:
    from bigearth.serving.segmenter import ModelSegmenter

    return ModelSegmenter(str(built["seg"]))


def _index(pid: str) -> int:
    return int(pid[-5:].replace("_", ""))


def _with_map(built: dict[str, Any], present: bool = True) -> str:
    every = [p for ids in built["ids"].values() for p in ids]
    return next(p for p in every if (reference_map(_index(p)) is not None) == present)


def test_a_patch_id_is_mapped_by_the_served_model(app: Any, built: dict[str, Any], segmenter: Any) -> None:
    from bigearth.core.quicklook import area_shares
    from bigearth.shards.patches import PatchStore

    pid = built["ids"]["test"][1]
    r = call(app, "POST", "/v1/segment", json={"patch_id": pid}, headers=H)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["patch_id"] == pid and body["classes"] == list(BEN19) and list(body["shares"]) == list(BEN19)
    groups = {g: tuple(b) for g, b in segmenter.describe()["groups"].items()}
    (want,) = segmenter.segment_batch([PatchStore(str(built["shards"])).arrays(pid, groups)])
    indices, palette, alphas = _decode(base64.b64decode(body["png"]))
    assert indices.shape == (120, 120) and np.array_equal(indices, want["map"])
    assert palette[: len(BEN19)] == list(BEN19_COLOURS) and alphas[IGNORE_INDEX] == 0
    assert body["shares"] == pytest.approx(area_shares(want["map"])) and sum(body["shares"].values()) == pytest.approx(
        1
    )
    assert body["scored_pixels"] == 120 * 120  # a predicted map has a class everywhere
    assert [e["name"] for e in body["legend"]] == list(BEN19)
    assert body["legend"][0] == {"name": "Urban fabric", "colour": "#e6004d"}  # CLC 111's colour, (230, 0, 77)
    assert body["model"]["name"].startswith("seg-tiny") and "@" in body["model"]["version"]


def test_an_upload_is_mapped_as_its_archived_twin_and_the_png_comes_when_asked(
    app: Any, built: dict[str, Any], segmenter: Any
) -> None:
    from bigearth.shards.patches import PatchStore

    pid = built["ids"]["train"][2]
    by_id = call(app, "POST", "/v1/segment", json={"patch_id": pid}, headers=H).json()
    groups = {g: tuple(b) for g, b in segmenter.describe()["groups"].items()}
    arrays = PatchStore(str(built["shards"])).arrays(pid, groups)
    files = {"patch.npz": ("patch.npz", _npz({g: a[0] for g, a in arrays.items()}))}
    by_upload = call(app, "POST", "/v1/segment", files=files, headers=H)
    assert by_upload.status_code == 200, by_upload.text
    assert by_upload.json()["patch_id"] is None
    assert by_upload.json()["png"] == by_id["png"] and by_upload.json()["shares"] == by_id["shares"]
    png = base64.b64decode(by_id["png"])
    for extra, headers in (
        ("", {"Accept": "image/png"}),
        ("?format=png", {}),
        ("?format=png", {"Accept": "application/json"}),  # the parameter wins
    ):
        r = call(app, "POST", f"/v1/segment{extra}", json={"patch_id": pid}, headers={**H, **headers})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content == png
    r = call(app, "POST", "/v1/segment?format=json", json={"patch_id": pid}, headers={**H, "Accept": "image/png"})
    assert r.headers["content-type"] == "application/json" and r.json()["png"] == by_id["png"]
    pil = pytest.importorskip("PIL.Image")
    assert pil.open(io.BytesIO(png)).mode == "P"


def test_the_reference_map_of_a_pair(app: Any, built: dict[str, Any]) -> None:
    pid = _with_map(built)
    r = call(app, "GET", f"/v1/patches/{pid}/reference.png", headers=H)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    indices, _, alphas = _decode(r.content)
    codes = reference_map(_index(pid))
    assert codes is not None
    want = reference_targets(codes)
    assert np.array_equal(indices, want) and alphas[IGNORE_INDEX] == 0
    assert (indices[:2] == IGNORE_INDEX).all() and (indices[2:] != IGNORE_INDEX).all()  # no data, UNLABELED
    without = _with_map(built, present=False)
    r = call(app, "GET", f"/v1/patches/{without}/reference.png", headers=H)
    assert r.status_code == 404 and r.json()["field"] == "patch_id"
    assert without in r.json()["message"] and "has no reference map" in r.json()["message"]
    r = call(app, "GET", f"/v1/patches/{UNKNOWN_ID}/reference.png", headers=H)
    assert r.status_code == 404 and "not in the shard set" in r.json()["message"]
    r = call(app, "GET", "/v1/patches/not-a-patch/reference.png", headers=H)
    assert r.status_code == 422 and r.json()["field"] == "patch_id"
    assert call(app, "GET", f"/v1/patches/{pid}/reference.png").status_code == 401
    facets = call(app, "GET", "/v1/facets", headers=H).json()
    assert facets["segmentation"] is True and facets["reference_maps"] is True


def _s1_only() -> dict[str, Any]:
    s1 = {"VV": np.zeros((120, 120), np.float32), "VH": np.zeros((120, 120), np.float32)}
    return {"files": {"s1.npz": ("s1.npz", _npz(s1))}}


def _one_band() -> dict[str, Any]:
    from bigearth.archive.geotiff import encode

    tif = encode(np.ones((120, 120), dtype="uint16"), epsg=32633, ulx=404400.0, uly=5342400.0, res=10.0)
    return {"files": {"B02": ("x_B02.tif", tif)}}


SEGMENT_BAD: dict[str, tuple[Any, int, str | None, str]] = {
    "another content type": (
        lambda: {"content": b"x", "headers": {"content-type": "text/plain"}},
        415,
        "content-type",
        "send multipart/form-data",
    ),
    "a malformed patch id": (lambda: {"json": {"patch_id": "S2A_x"}}, 422, "patch_id", "not a valid patch id"),
    "an unknown patch": (lambda: {"json": {"patch_id": UNKNOWN_ID}}, 404, "patch_id", "not in the shard set"),
    "an unknown field": (lambda: {"json": {"patch_id": UNKNOWN_ID, "k": 5}}, 422, "k", "Extra inputs"),
    "no patch id": (lambda: {"json": {}}, 422, "patch_id", "Field required"),
    "broken JSON": (
        lambda: {"content": b"[1, 2", "headers": {"content-type": "application/json"}},
        422,
        None,
        "Invalid JSON",
    ),
    "an S1-only upload": (_s1_only, 422, "bands", "missing band(s) ['B02'"),
    "one band": (_one_band, 422, "bands", "missing band(s) ['VV', 'VH', 'B03'"),
    "an unknown format": (
        lambda: {"json": {"patch_id": UNKNOWN_ID}, "params": {"format": "gif"}},
        422,
        "format",
        "'json' or 'png'",
    ),
    "a body over the limit": (
        lambda: {"files": {"patch.npz": ("patch.npz", b"\0" * (LIMIT_MB * 1024 * 1024 + 10))}},
        413,
        "body",
        "over the limit",
    ),
}


@pytest.mark.parametrize("case", list(SEGMENT_BAD))
def test_bad_segment_requests_are_a_4xx_naming_the_field(app: Any, case: str) -> None:
    make, status, field, message = SEGMENT_BAD[case]
    kwargs = make()
    headers = {**H, **kwargs.pop("headers", {})}
    r = call(app, "POST", "/v1/segment", headers=headers, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and message in r.json()["message"], r.json()
    assert call(app, "GET", "/healthz").status_code == 200  # and the service keeps answering


def _damaged_copy(built: dict[str, Any], out: Path, pid: str, width: int, codes: np.ndarray | None) -> Path:
    """The shard set with its train shard rewritten: the `reference_map` column `width` bytes a map (its maps cut
    to that), the map of `pid` replaced by `codes`; what a bad ingest or another writer could leave."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copytree(built["shards"], out)
    path = out / "train" / "part-00000.parquet"
    table = pq.read_table(path)
    maps = [None if m is None else m[:width] for m in table.column("reference_map").to_pylist()]
    if codes is not None:
        maps[table.column("patch_id").to_pylist().index(pid)] = codes.astype("<u2").tobytes()
    at = table.schema.get_field_index("reference_map")
    table = table.set_column(at, pa.field("reference_map", pa.binary(width)), pa.array(maps, pa.binary(width)))
    pq.write_table(table, path, write_page_index=True, write_page_checksum=True)
    return out


def test_a_corrupt_stored_reference_map_is_a_500_whose_log_names_the_pair(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Corrupt stored data as elsewhere (a damaged shard page): a 500 with an error id, the log naming the pair and
    the fix; the service keeps answering for the other pairs."""
    from bigearth.serving.local import create_local_app

    files = build_service_files(tmp_path / "service", maps=True)  # its own index: the module's app holds the other
    pid, other = [p for p in files["ids"]["train"] if reference_map(_index(p)) is not None][:2]
    damages = {
        "CLC code(s) [150]": (120 * 120 * 2, np.full((120, 120), 150, np.uint16)),  # 150: no CLC code
        "14400 bytes, not 28800": (120 * 60 * 2, None),  # every map of the shard cut to half
    }
    for n, (expected, (width, codes)) in enumerate(damages.items()):
        data = _damaged_copy(files, tmp_path / f"shards-{n}", pid, width, codes)
        application = create_local_app(_args(files).model_copy(update={"data": str(data)}))
        try:
            caplog.clear()
            with caplog.at_level("ERROR", logger="bigearth.serve"):
                r = call(application, "GET", f"/v1/patches/{pid}/reference.png", headers=H)
            assert r.status_code == 500 and r.json()["error"] == "internal", r.text
            logged = [str(rec.exc_info[1]) for rec in caplog.records if rec.exc_info]
            assert logged and f"patch {pid!r}" in logged[-1] and expected in logged[-1], logged
            assert "re-run the ingest of this shard set" in logged[-1]
            if codes is not None:  # the other pairs' maps are whole
                assert call(application, "GET", f"/v1/patches/{other}/reference.png", headers=H).status_code == 200
        finally:
            application.state.service.retriever.retriever.index.close()


def test_facets_read_the_shard_set_for_its_maps_once(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shard set is fixed while served: whether it holds reference maps is read once, not by every request."""
    store = app.state.service.retriever.retriever.store

    def no(*args: Any) -> Any:
        raise AssertionError("the shard set was read per request")

    monkeypatch.setattr(store, "has_pixels", no)
    monkeypatch.setattr(store, "ids", no)
    for _ in range(2):
        r = call(app, "GET", "/v1/facets", headers=H)
        assert r.status_code == 200 and r.json()["reference_maps"] is True, r.text


def test_segment_matches_the_content_type_by_its_media_type(app: Any, built: dict[str, Any]) -> None:
    pid = _with_map(built)
    body = json.dumps({"patch_id": pid}).encode()
    expected = call(app, "POST", "/v1/segment", json={"patch_id": pid}, headers=H).json()
    for ctype in ("Application/JSON", "application/json; charset=utf-8"):
        r = call(app, "POST", "/v1/segment", content=body, headers={**H, "content-type": ctype})
        assert r.status_code == 200 and r.json() == expected, (ctype, r.text)
    r = call(app, "POST", "/v1/segment", content=body, headers={**H, "content-type": "application/jsonx"})
    assert r.status_code == 415 and r.json()["field"] == "content-type", r.text
    assert "'application/jsonx'" in r.json()["message"]
    assert 'application/json ({"patch_id": ...})' in r.json()["message"] and "{{" not in r.json()["message"]


def test_a_service_without_a_segmentation_model_or_maps_says_so(tmp_path: Path, built: dict[str, Any]) -> None:
    from bigearth.serving.local import create_local_app
    from bigearth.serving.segmenter import NotASegmentationModel

    plain = build_service_files(tmp_path / "plain")  # no maps column
    application = create_local_app(_args(plain))
    try:
        pid = plain["ids"]["train"][0]
        r = call(application, "POST", "/v1/segment", json={"patch_id": pid}, headers=H)
        assert r.status_code == 404 and r.json()["error"] == "no_segmentation_model"
        assert "segmentation_checkpoint" in r.json()["message"]
        r = call(application, "GET", f"/v1/patches/{pid}/reference.png", headers=H)
        assert r.status_code == 404 and pid in r.json()["message"] and "holds no reference maps" in r.json()["message"]
        facets = call(application, "GET", "/v1/facets", headers=H).json()
        assert facets["segmentation"] is False and facets["reference_maps"] is False
    finally:
        application.state.service.retriever.retriever.index.close()
    with pytest.raises(NotASegmentationModel, match=r"classification model, it makes no class maps"):
        create_local_app(_args(built, segmentation_checkpoint=str(built["ck"])))  # a classifier's checkpoint


def test_a_segmentation_checkpoint_is_refused_as_the_classifier_and_by_the_indexer(
    tmp_path: Path, built: dict[str, Any]
) -> None:
    """At start, naming the task and the option to use: not a service whose every classify is a 500, nor an index
    run failing in its workers."""
    from bigearth.execution.executors import LocalExecutor
    from bigearth.retrieval import open_index
    from bigearth.retrieval.indexer import build_index
    from bigearth.serving.classifier import NotAClassificationModel
    from bigearth.serving.local import create_local_app

    seg = str(built["seg"])
    expected = f"checkpoint {seg!r} is a segmentation model (task: segmentation): serve it with segmentation_checkpoint"
    with pytest.raises(NotAClassificationModel) as e:
        create_local_app(_args(built).model_copy(update={"checkpoint": seg}))
    assert str(e.value).startswith(expected)
    with pytest.raises(ValueError, match=r"is a segmentation model \(task: segmentation\): it makes class maps, no "):
        build_index(seg, str(built["shards"]), str(tmp_path / "index"), progress=False, executor=LocalExecutor())
    with open_index(str(tmp_path / "index"), "bigearthnet") as index:
        assert index.live_version() is None and index._versions() == []  # refused before any version was begun


def test_the_sdk_segments_and_fetches_reference_maps(app: Any, built: dict[str, Any]) -> None:
    """`Client.segment`/`reference_map` (and the AsyncClient's) over the in-process app: the SDK's own request
    building and parsing, httpx's ASGI transport instead of a socket."""
    import asyncio

    import httpx

    from bigearth.client import AsyncClient, Client

    pid = _with_map(built)
    with Client("http://unit", api_key=KEY) as c:
        c._http.close()
        c._http = httpx.Client(transport=_SyncAsgi(app), base_url="http://unit", headers=c.headers)
        res = c.segment(patch_id=pid)
        assert res.patch_id == pid and res.png_bytes[:4] == b"\x89PNG" and list(res.shares) == list(BEN19)
        assert res.png_bytes == call(app, "POST", "/v1/segment?format=png", json={"patch_id": pid}, headers=H).content
        reference = c.reference_map(pid)
        assert reference == call(app, "GET", f"/v1/patches/{pid}/reference.png", headers=H).content
        with pytest.raises(ValueError, match="either a patch or a patch_id"):
            c.segment({"VV": np.zeros((120, 120))}, patch_id=pid)
        with pytest.raises(ValueError, match="give a patch"):
            c.segment()

    async def both() -> tuple[Any, bytes]:
        async with AsyncClient("http://unit", api_key=KEY) as ac:
            await ac._http.aclose()
            ac._http = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://unit", headers=ac.headers
            )
            return await ac.segment(patch_id=pid), await ac.reference_map(pid)

    seg, ref = asyncio.run(both())
    assert seg.png == res.png and ref == reference


class _SyncAsgi:
    """A synchronous httpx transport answering from an ASGI app in this process (each request its own loop)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def handle_request(self, request: Any) -> Any:
        import asyncio

        import httpx

        body = request.read()

        async def one() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://unit") as a:
                r = await a.request(request.method, str(request.url), headers=request.headers, content=body)
                return httpx.Response(r.status_code, headers=r.headers, content=r.content)

        return asyncio.run(one())

    def close(self) -> None:
        pass
