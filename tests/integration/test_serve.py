"""The Serve application over real HTTP on a real local Ray: tiny-cpu trained and indexed on a synthetic archive,
REAL BigEarthNet patches from ../shared uploaded as GeoTIFFs; through the SDK, the CLI and raw HTTP. What needs Serve:
the wiring (handles adapted to the interfaces, errors across deployments), batching, metrics from every replica,
limits over a socket through the proxy. The HTTP application's own behaviour (auth, limits, bad input, the page)
is tested in-process in tests/unit/test_http.py."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bigearth.api.schemas import ServiceError
from bigearth.client import AsyncClient, Client
from bigearth.core.labels import BEN19
from bigearth.demo.run import find_real_patches
from bigearth.input.raydata import read_columns
from helpers import SHARED, deploy_app, random_checkpoint

pytestmark = pytest.mark.usefixtures("ray_local")
KEY = "test-key-1"
PAIRS = find_real_patches(str(SHARED))  # (S2 folder, S1 folder), paired by the S1 metadata
S2_DIRS, S1_DIRS = [p[0] for p in PAIRS], [p[1] for p in PAIRS]


@pytest.fixture(scope="module")
def url(tiny_run: Path, index_v2: Path, shards_v2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from ray import serve
    from ray.serve._private.build_app import build_app

    from bigearth.serving.app import AppArgs, build

    keys = tmp_path_factory.mktemp("secrets") / "api-keys"
    keys.write_text(f"# comment lines are not keys\n{KEY}\n")
    seg = random_checkpoint(tmp_path_factory.mktemp("seg") / "seg", "seg-tiny", model_kwargs={"fusion": "late"})
    args = AppArgs(
        checkpoint=str(tiny_run),
        segmentation_checkpoint=str(seg),
        index=str(index_v2),
        data=str(shards_v2),
        replica_cpus=0.25,
        max_batch_size=16,
        batch_wait_timeout_s=0.05,
        api_keys_file=str(keys),
        max_body_mb=4,
        body_timeout_s=3,
    )
    app = build(args)
    stored = [d._replica_config.serialized_init_args for d in build_app(app, name="bigearth").deployments]
    assert not [a for a in stored if KEY.encode() in a]  # what Serve keeps holds the file's name, never the key
    assert [a for a in stored if str(keys).encode() in a]
    yield deploy_app(app, "bigearth")
    serve.shutdown()


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[Client]:
    with Client(url, api_key=KEY, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def ids(shards_v2: Path) -> dict[str, list[str]]:
    rows = read_columns(str(shards_v2), ["patch_id", "split"]).to_pylist()
    return {s: [r["patch_id"] for r in rows if r["split"] == s] for s in ("train", "validation", "test")}


def _real_pair_files(i: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    files = [p for d in (S2_DIRS[i], S1_DIRS[i]) for p in sorted(d.glob("*.tif"))]
    return [(p.stem.rsplit("_", 1)[-1], (p.name, p.read_bytes(), "image/tiff")) for p in files]


# ------------------------------------------------------------------------------------------------ health
def test_health_and_readiness(client: Client, url: str, tiny_run: Path) -> None:
    assert client.health()
    anonymous = httpx.get(f"{url}/readyz")  # a probe: ready or not, nothing about what is served
    assert anonymous.status_code == 200 and anonymous.json() == {
        "ready": True,
        "model": None,
        "index": None,
        "detail": None,
    }
    wrong = httpx.get(f"{url}/readyz", headers={"X-API-Key": "wrong"}).json()
    assert wrong["model"] is None and tiny_run.name not in json.dumps(wrong)
    ready = client.ready()  # with the key: which model and index
    assert ready.ready and ready.model is not None and ready.model.name == "tiny/late"
    assert ready.model.classes == list(BEN19) and "@" in ready.model.version
    assert ready.index is not None and ready.index["points"] == ready.index["pairs_in_shards"] > 0


# ------------------------------------------------------------------------------------------------ classify
@pytest.mark.real
def test_classify_real_patches_uploaded_as_geotiffs(client: Client, url: str) -> None:
    assert len(S2_DIRS) == len(S1_DIRS) >= 3
    for s2, s1 in zip(S2_DIRS, S1_DIRS, strict=True):
        r = client.classify(s2, s1, threshold=0.3)
        assert list(r.probabilities) == list(BEN19)
        assert all(0.0 <= p <= 1.0 for p in r.probabilities.values())
        assert r.labels == [n for n, p in r.probabilities.items() if p >= 0.3]
        assert r.model.name == "tiny/late"
    raw = httpx.post(f"{url}/v1/classify", files=_real_pair_files(0), headers={"X-API-Key": KEY}, timeout=60)
    assert raw.status_code == 200, raw.text
    assert raw.json()["probabilities"] == pytest.approx(client.classify(S2_DIRS[0], S1_DIRS[0]).probabilities)


def test_classify_by_patch_id_equals_classify_of_the_uploaded_arrays(
    client: Client, ids: dict[str, list[str]], shards_v2: Path
) -> None:
    from bigearth.core.bands import GROUPS
    from bigearth.shards.patches import PatchStore

    pid = ids["test"][0]
    by_id = client.classify(patch_id=pid)
    arrays = PatchStore(str(shards_v2)).arrays(pid, {g: GROUPS[g] for g in ("s1", "s2_10m", "s2_20m")})
    by_upload = client.classify({g: a[0] for g, a in arrays.items()})  # sent as .npz
    assert by_id.patch_id == pid and by_upload.patch_id is None
    assert list(by_id.probabilities.values()) == pytest.approx(list(by_upload.probabilities.values()), abs=1e-5)


def test_dynamic_batching_batches_concurrent_requests(url: str, ids: dict[str, list[str]], shards_v2: Path) -> None:
    from ray import serve

    from bigearth.core.bands import GROUPS
    from bigearth.shards.patches import PatchStore

    async def burst() -> None:
        async with AsyncClient(url, api_key=KEY) as c:
            await asyncio.gather(*(c.classify(patch_id=pid) for pid in ids["train"][:24]))

    asyncio.run(burst())
    metrics = httpx.get(f"{url}/metrics").text
    count = _metric(metrics, "bigearth_classifier_batch_size_count")
    total = _metric(metrics, "bigearth_classifier_batch_size_sum")
    assert count >= 24 and total / count > 1.5, (total, count)  # requests shared model calls
    # the replicas batch up to AppArgs.max_batch_size (16, set by @serve.batch's setters), not the decorator's 10
    arrays = PatchStore(str(shards_v2)).arrays(ids["train"][0], {g: GROUPS[g] for g in ("s1", "s2_10m", "s2_20m")})
    classifier = serve.get_deployment_handle("Classifier", app_name="bigearth")
    responses = [classifier.infer.remote(arrays) for _ in range(48)]
    assert 10 < max(r.result()["batch_size"] for r in responses) <= 16


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


# ------------------------------------------------------------------------------------------------ search
def test_search_by_patch_id_with_filters(client: Client, url: str, ids: dict[str, list[str]]) -> None:
    pid = ids["test"][1]
    label = client.patch(pid).labels[0]
    r = client.search(patch_id=pid, k=5, filter={"split": "train", "labels_any": [label]})
    assert 0 < len(r.hits) <= 5 and r.query_patch_id == pid
    assert all(h.payload["split"] == "train" and label in h.payload["labels"] for h in r.hits)
    assert [h.score for h in r.hits] == sorted((h.score for h in r.hits), reverse=True)
    unfiltered = client.search(patch_id=pid, k=5)
    assert pid not in [h.patch_id for h in unfiltered.hits]  # the query itself is left out
    body = {"patch_id": pid, "k": 3, "using": "s2", "filter": {"date_from": "2017-01-01", "country": ["Austria"]}}
    raw = httpx.post(f"{url}/v1/search", json=body, headers={"X-API-Key": KEY})
    assert raw.status_code == 200, raw.text
    assert all(h["payload"]["country"] == "Austria" for h in raw.json()["hits"])


def test_search_by_vector(client: Client, ids: dict[str, list[str]], tiny_run: Path, shards_v2: Path) -> None:
    import torch

    from bigearth.core.bands import GROUPS
    from bigearth.models.checkpoints import load
    from bigearth.shards.patches import PatchStore

    # the embedded index is open in the Retriever (one process per folder): compute the vector as the indexer did
    pid = ids["validation"][0]
    model = load(tiny_run).model
    arrays = PatchStore(str(shards_v2)).arrays(pid, {"s1": GROUPS["s1"]})
    with torch.no_grad():
        vectors = model.embed({"s1": torch.from_numpy(arrays["s1"])})
    r = client.search(vector=vectors["s1"][0].tolist(), using="s1", k=3)
    assert r.hits[0].patch_id == pid and r.hits[0].score == pytest.approx(1.0, abs=1e-3)


@pytest.mark.real
def test_search_by_uploaded_real_patch_and_cross_modal(
    client: Client, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from bigearth.cli import main

    r = client.search(S2_DIRS[0], S1_DIRS[0], k=4, filter={"split": ["train", "validation"]})
    assert len(r.hits) == 4 and all(h.payload["split"] in ("train", "validation") for h in r.hits)
    assert r.vector_kind == "features"
    cross = client.search(S1_DIRS[1], k=4, using="s2", query_modality="s1")  # S1 only, against S2 vectors
    assert len(cross.hits) == 4 and cross.using == "s2" and cross.query_modality == "s1"
    assert cross.vector_kind == "aligned"  # the answer says which vectors were searched
    # the same through `bigearth query`: the VV and VH GeoTIFFs of a radar patch against the optical archive
    argv = ["query", "--url", url, "--api-key", KEY, "search", str(S1_DIRS[1]), "--using", "s2"]
    assert main([*argv, "--query-modality", "s1", "--k", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [h["patch_id"] for h in out["hits"]] == [h.patch_id for h in cross.hits]
    assert (out["using"], out["query_modality"], out["vector_kind"]) == ("s2", "s1", "aligned")
    with pytest.raises(ServiceError) as e:
        client.search(S1_DIRS[1], k=4, using="s2")  # the S2 vector of an S1-only upload cannot exist
    assert e.value.status == 422 and e.value.field == "bands"


# ------------------------------------------------------------------------------------------------ segment
@pytest.mark.real
def test_segment_real_patches_uploaded_as_geotiffs(client: Client, url: str) -> None:
    from PIL import Image

    r = client.segment(S2_DIRS[0], S1_DIRS[0])
    assert r.patch_id is None and r.classes == list(BEN19) and r.scored_pixels == 120 * 120
    image = Image.open(io.BytesIO(r.png_bytes))
    assert image.format == "PNG" and image.mode == "P" and image.size == (120, 120)
    indices = np.asarray(image)
    assert r.shares == pytest.approx({n: float((indices == i).mean()) for i, n in enumerate(BEN19)})
    assert [e.name for e in r.legend] == list(BEN19) and r.model.name == "seg-tiny/late"
    headers = {"X-API-Key": KEY, "Accept": "image/png"}
    raw = httpx.post(f"{url}/v1/segment", files=_real_pair_files(0), headers=headers, timeout=60)
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/png" and raw.content == r.png_bytes


def test_segment_by_patch_id_equals_segment_of_the_uploaded_arrays_and_batches(
    client: Client, url: str, ids: dict[str, list[str]], shards_v2: Path
) -> None:
    from bigearth.core.bands import GROUPS
    from bigearth.shards.patches import PatchStore

    pid = ids["test"][0]
    by_id = client.segment(patch_id=pid)
    arrays = PatchStore(str(shards_v2)).arrays(pid, {g: GROUPS[g] for g in ("s1", "s2_10m", "s2_20m")})
    by_upload = client.segment({g: a[0] for g, a in arrays.items()})  # sent as .npz
    assert by_id.patch_id == pid and by_upload.patch_id is None
    assert by_id.png == by_upload.png and by_id.shares == by_upload.shares
    assert sum(by_id.shares.values()) == pytest.approx(1.0)

    async def burst() -> list[Any]:  # concurrent requests through the Segmenter's @serve.batch
        async with AsyncClient(url, api_key=KEY) as c:
            return list(await asyncio.gather(*(c.segment(patch_id=p) for p in ids["train"][:12])))

    maps = asyncio.run(burst())
    assert [m.patch_id for m in maps] == ids["train"][:12]
    assert maps[0].png == client.segment(patch_id=ids["train"][0]).png  # batched or not, the same map


def test_reference_maps_facets_and_bad_segment_requests_through_serve(
    client: Client, url: str, ids: dict[str, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shard set here was ingested without reference maps: a 404 naming the pair, through the Retriever's
    handle (the maps themselves: tests/unit/test_segment_http.py, tests/e2e/test_map_view.py); hostile bodies of
    /v1/segment are 4xx naming the field; `bigearth query segment` writes the PNG and prints the shares."""
    from bigearth.cli import main

    pid = ids["train"][1]
    with pytest.raises(ServiceError) as e:
        client.reference_map(pid)
    assert e.value.status == 404 and e.value.field == "patch_id" and pid in e.value.message
    assert "holds no reference maps" in e.value.message
    facets = client.facets()
    assert facets.segmentation is True and facets.reference_maps is False
    h = {"X-API-Key": KEY}
    cases = [
        ({"content": b"x", "headers": {**h, "content-type": "text/plain"}}, 415, "content-type"),
        ({"json": {"patch_id": "S2A_nope"}, "headers": h}, 422, "patch_id"),
        ({"json": {"patch_id": "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_99_99"}, "headers": h}, 404, "patch_id"),
        ({"json": {"patch_id": pid, "threshold": 0.5}, "headers": h}, 422, "threshold"),
        ({"files": _real_pair_files(0)[-2:], "headers": h}, 422, "bands"),  # S1 only: the model needs S2 too
        ({"files": [("B02", ("x_B02.tif", b"\0" * (5 * 1024 * 1024), "image/tiff"))], "headers": h}, 413, "body"),
        ({"json": {"patch_id": pid}}, 401, "X-API-Key"),
    ]
    for kwargs, status, field in cases:
        r = httpx.post(f"{url}/v1/segment", timeout=60, **kwargs)  # type: ignore[arg-type]
        assert (r.status_code, r.json()["field"]) == (status, field), r.text
    assert client.health()
    base = ["query", "--url", url, "--api-key", KEY]
    assert main([*base, "segment", "--patch-id", pid, "--out", str(tmp_path / "m.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    want = client.segment(patch_id=pid)
    assert (tmp_path / "m.png").read_bytes() == want.png_bytes and out["scored_pixels"] == 120 * 120
    assert out["shares"] == pytest.approx({n: s for n, s in want.shares.items() if s > 0}, abs=1e-6)
    assert main([*base, "reference", pid, "--out", str(tmp_path / "r.png")]) == 1
    assert "404 not_found" in capsys.readouterr().err and not (tmp_path / "r.png").exists()


# ------------------------------------------------------------------------------------------------ patches
def test_patch_metadata_and_quicklook(client: Client, ids: dict[str, list[str]]) -> None:
    from PIL import Image

    pid = ids["train"][3]
    info = client.patch(pid)
    assert info.patch_id == pid and info.split == "train" and info.labels
    assert -90 < info.location.lat < 90 and info.s2_acquisition.endswith("Z")
    png = client.rgb(pid, scale=2)
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.size == (240, 240) and img.mode == "RGB"
    assert np.asarray(img).std() > 5  # a stretched picture, not a flat fill


# ------------------------------------------------------------------------------------------------ the CLI
def test_query_cli(url: str, ids: dict[str, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bigearth.cli import main

    pid = ids["test"][2]
    base = ["query", "--url", url, "--api-key", KEY]
    assert main([*base, "search", "--patch-id", pid, "--k", "2", "--split", "train"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["hits"]) == 2 and all(h["payload"]["split"] == "train" for h in out["hits"])
    assert main([*base, "rgb", pid, "--out", str(tmp_path / "q.png")]) == 0
    assert (tmp_path / "q.png").read_bytes()[:4] == b"\x89PNG"
    assert main([*base, "patch", "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_99_99"]) == 1
    assert "404 not_found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ the guard
def test_the_app_behind_serve_keeps_its_auth_limits_and_error_model(url: str, ids: dict[str, list[str]]) -> None:
    """The plain application's guard and errors through Serve's proxy and handles (each case in full:
    tests/unit/test_http.py): the key, the Content-Length limit, Starlette's answers and an `ApiError` raised in the
    Retriever deployment arrive as the error model; the document served is the one the application builds."""
    from bigearth.serving.http import document

    big = [("B02", ("x_B02.tif", b"\0" * (5 * 1024 * 1024), "image/tiff"))]
    r = httpx.post(f"{url}/v1/classify", files=big, headers={"X-API-Key": KEY}, timeout=60)
    assert r.status_code == 413 and r.json()["field"] == "body"
    r = httpx.post(f"{url}/v1/search", json={"patch_id": ids["train"][0]})
    assert r.status_code == 401 and r.json()["field"] == "X-API-Key"
    r = httpx.post(f"{url}/v1/search", json={"patch_id": ids["train"][0]}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    r = httpx.get(f"{url}/v1/search", headers={"X-API-Key": KEY})
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"
    assert httpx.get(f"{url}/healthz").status_code == 200 and httpx.get(f"{url}/metrics/x").status_code == 401
    unknown = {"patch_id": "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_99_99"}
    r = httpx.post(f"{url}/v1/search", json=unknown, headers={"X-API-Key": KEY})
    assert r.status_code == 404 and r.json()["field"] == "patch_id" and "not in the index" in r.json()["message"]
    r = httpx.post(f"{url}/v1/search", json={"k": 3}, headers={"X-API-Key": KEY})  # counted below
    assert r.status_code == 422 and r.json()["field"] == "patch_id"
    assert httpx.get(f"{url}/openapi.json").json() == document()


def test_a_handle_call_gives_back_the_api_error_or_unavailable() -> None:
    """What a handle raises, as the ingress's adapters give it to the application: another deployment's ApiError
    (wrapped by Ray) as itself, a dead, restarting or overloaded replica as `Unavailable` (the app's 503)."""
    from ray.exceptions import RayTaskError
    from ray.serve.exceptions import BackPressureError

    from bigearth.api.schemas import ApiError
    from bigearth.serving.ingress import _call
    from bigearth.serving.interfaces import Unavailable

    async def raises(e: BaseException) -> None:
        raise e

    wrapped = RayTaskError("search", "tb", ApiError(404, "not in the index", "patch_id")).as_instanceof_cause()
    with pytest.raises(ApiError) as e:
        asyncio.run(_call(raises(wrapped)))
    assert type(e.value) is ApiError and (e.value.status, e.value.field) == (404, "patch_id")
    with pytest.raises(Unavailable, match="BackPressureError"):
        asyncio.run(_call(raises(BackPressureError(num_queued_requests=3, max_queued_requests=2))))
    with pytest.raises(KeyError):  # anything else: as it is (the app's 500 with an error id)
        asyncio.run(_call(raises(KeyError("x"))))


def _raw_request(url: str, head: str, chunks: Iterator[bytes], pause: float = 0.0) -> tuple[bytes, int]:
    """Send `head` then `chunks` over a raw socket, stopping as soon as the server answers: (the answer, bytes of
    body sent). httpx cannot show this: it sends the whole body before it reads a response."""
    import select

    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        for chunk in chunks:
            if select.select([sock], [], [], pause)[0]:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        answer = b""
        sock.settimeout(30)
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                got = sock.recv(65536)
                if not got:
                    break
                answer += got
    return answer, sent


def _status_and_json(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():  # one chunk: "<hex>\r\n<json>\r\n0\r\n\r\n"
        body = body.split(b"\r\n", 1)[1].rsplit(b"\r\n0\r\n", 1)[0]
    return int(head.split()[1]), json.loads(body.strip() or b"{}")


def test_a_chunked_body_stops_at_the_limit_while_it_streams(url: str) -> None:
    """No Content-Length: the service counts the body as it arrives and answers 413 long before 64 MB are sent."""
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    block = b"\0" * (256 * 1024)
    chunks = (f"{len(block):x}\r\n".encode() + block + b"\r\n" for _ in range(256))  # 64 MB if all sent
    answer, sent = _raw_request(url, head, chunks, pause=0.01)  # ~25 MB/s: a fast link, slower than loopback
    status, body = _status_and_json(answer)
    assert status == 413 and body["field"] == "body" and "over the limit" in str(body["message"]), answer[:500]
    print(f"413 after {sent / 2**20:.1f} MiB of a 64 MiB chunked body (limit 4 MiB)")
    assert sent < 32 * 1024 * 1024, sent  # answered at the limit, not after the whole body


def test_a_stalled_body_times_out_with_a_408(url: str) -> None:
    head = (
        f"POST /v1/search HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    t = time.monotonic()
    answer, _ = _raw_request(url, head, iter([b'{"patch_id": ']), pause=0.0)
    status, body = _status_and_json(answer)
    assert status == 408 and body["field"] == "body", answer[:500]
    assert "nothing received for 3 s" in str(body["message"]), answer[:500]
    assert time.monotonic() - t < 25  # the body timeout (3 s here), not a hang


def test_service_still_answers_after_all_that(client: Client, ids: dict[str, list[str]]) -> None:
    assert client.health() and client.ready().ready
    assert client.classify(patch_id=ids["validation"][1]).probabilities
    metrics = httpx.get(f"{client.base_url}/metrics").text
    assert _metric(metrics, 'bigearth_requests_total{route="/v1/search",status="422"}') > 0
    assert _metric(metrics, 'bigearth_requests_total{route="/v1/classify",status="200"}') > 0
    assert 'status="500"' not in metrics


# ------------------------------------------------------------------------------------------------ config
def test_serve_config_is_a_valid_deploy_config_with_valid_args() -> None:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from bigearth.serving.app import AppArgs
    from helpers import REPO

    cfg = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(cfg)
    (app,) = schema.applications
    assert app.import_path == "bigearth.serving.app:build"
    args = AppArgs.model_validate(app.args)
    assert args.max_ongoing_requests > args.max_batch_size  # or @serve.batch never fills a batch


# ------------------------------------------------------------------------------------------------ docs/api.md
def test_the_api_docs_examples_run(url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every Python block of docs/api.md runs against this service (its URL and API key swapped in)."""
    import re

    from helpers import REPO

    text = (REPO / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    monkeypatch.setenv("BIGEARTH_API_KEY", KEY)
    monkeypatch.chdir(tmp_path)  # the examples write quicklook.png into the working folder
    for block in blocks:
        code = block.replace("http://127.0.0.1:8000", url).replace("../shared", str(SHARED))
        exec(compile(code, "docs/api.md", "exec"), {"__name__": "docs_api"})
    assert (tmp_path / "quicklook.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"  # this service serves a segmentation model


def test_patch_listing(client: Client, ids: dict[str, list[str]]) -> None:
    page = client.patches(split="train", limit=7, offset=2)
    assert page.patch_ids == ids["train"][2:9] and page.total == len(ids["train"])
    assert client.patches(limit=1000).total == sum(len(v) for v in ids.values())
    with pytest.raises(ServiceError) as e:
        client.patches(split="holdout")
    assert e.value.status == 422 and e.value.field == "split"


# ------------------------------------------------------------------------------------------------ browse, facets
def test_browse_pages_through_a_filter_and_facets_count_the_archive(url: str, client: Client, shards_v2: Path) -> None:
    rows = read_columns(str(shards_v2), ["patch_id", "split", "country"]).to_pylist()
    h = {"X-API-Key": KEY}
    facets = httpx.get(f"{url}/v1/facets", headers=h).json()
    assert facets["total"] == len(rows) == sum(facets["split"].values())
    assert facets["country"] == {c: n for c in facets["country"] if (n := sum(r["country"] == c for r in rows))}
    assert facets["classes"] == list(BEN19) and facets["vectors"] == ["fused", "s1", "s2"]
    country = next(iter(facets["country"]))
    want = {r["patch_id"] for r in rows if r["country"] == country and r["split"] == "train"}
    seen: list[dict] = []  # type: ignore[type-arg]
    cursor = None
    for _ in range(50):
        body = {"filter": {"country": [country], "split": ["train"]}, "limit": 7, "cursor": cursor}
        page = httpx.post(f"{url}/v1/browse", json=body, headers=h).json()
        assert page["total"] == len(want) and len(page["items"]) <= 7
        seen += page["items"]
        if (cursor := page["next_cursor"]) is None:
            break
    assert len(seen) == len(want) == len({i["patch_id"] for i in seen}) and {i["patch_id"] for i in seen} == want
    assert all({"labels", "location", "date", "season"} <= set(i["payload"]) for i in seen)
    # the same through the SDK (both clients)
    assert client.facets().model_dump() == facets
    sdk = client.browse({"country": country, "split": "train"}, limit=200)
    assert sdk.total == len(want) and {i.patch_id for i in sdk.items} == want and sdk.next_cursor is None

    async def pages() -> set[str]:
        async with AsyncClient(url, api_key=KEY) as c:
            first = await c.browse({"country": [country], "split": ["train"]}, limit=3)
            rest = await c.browse({"country": [country], "split": ["train"]}, limit=200, cursor=first.next_cursor)
            return {i.patch_id for i in first.items + rest.items}

    assert asyncio.run(pages()) == want
    # the quicklook of an uploaded patch: the real S2 bands give the same picture as its archived twin would
    from PIL import Image

    png = client.quicklook(S2_DIRS[0], scale=2)
    assert Image.open(io.BytesIO(png)).size == (240, 240) and np.asarray(Image.open(io.BytesIO(png))).std() > 5
    s1_only = httpx.post(f"{url}/v1/quicklook", files=_real_pair_files(0)[-2:], headers=h)
    assert s1_only.status_code == 422 and s1_only.json()["field"] == "bands" and "B04" in s1_only.json()["message"]
    bad = httpx.post(f"{url}/v1/browse", json={"filter": {"season": ["monsoon"]}}, headers=h)
    assert bad.status_code == 422 and bad.json()["field"].startswith("filter.season")
    bad = httpx.post(f"{url}/v1/browse", json={"cursor": "not-a-point-id"}, headers=h)
    assert bad.status_code == 422 and bad.json()["field"] == "cursor"


# ------------------------------------------------------------------------------------------------ the web page
def test_the_page_in_headless_chromium(url: str, shards_v2: Path) -> None:
    """The grid loads, a filter narrows it, a patch view shows probabilities and neighbours (a click on one opens
    it), uploads are classified and searched with (S1-only too), errors read as messages; no console errors."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from browser import chromium, console_errors, screenshot

    rows = read_columns(str(shards_v2), ["patch_id", "country"]).to_pylist()
    with chromium() as b:
        wait = WebDriverWait(b, 60)
        texts = lambda css: [e.text for e in b.find_elements(By.CSS_SELECTOR, css)]  # noqa: E731
        b.get(f"{url}/")
        # 1. the service wants a key: the page says so, readably
        wait.until(lambda _: texts("#errors .error"))
        assert "API key" in texts("#errors .error")[0] and "401" not in texts("#errors .error")[0]
        screenshot(b, "1-needs-key")
        assert console_errors(b, allowed=("status of 401",)) == []
        b.find_element(By.ID, "api-key").send_keys(KEY, Keys.ENTER)
        # 2. the grid: a page of quicklooks, the map's points, the filters from the facets
        wait.until(lambda _: len(b.find_elements(By.CSS_SELECTOR, "#grid .card")) == 24)
        wait.until(
            lambda _: b.execute_script(
                "return [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth === 120)"
            )
        )
        assert int(b.find_element(By.ID, "grid").get_attribute("data-total")) == len(rows)
        assert len(b.find_elements(By.CSS_SELECTOR, "#map-points circle")) == 24
        assert len(b.find_elements(By.CSS_SELECTOR, "#map-countries path")) > 40
        assert not texts("#errors .error")
        screenshot(b, "2-grid")
        # pages: a change in the form that is not applied yet leaves the pages of the applied filter alone
        country = b.find_element(By.CSS_SELECTOR, "#f-country input").get_attribute("value")
        b.find_element(By.CSS_SELECTOR, "#f-country input").click()  # ticked, not applied
        b.find_element(By.ID, "next").click()
        wait.until(lambda _: b.find_element(By.ID, "page-info").text == f"25–48 of {len(rows)} pairs")
        second = [e.get_attribute("data-patch") for e in b.find_elements(By.CSS_SELECTOR, "#grid .card")]
        b.find_element(By.ID, "prev").click()
        wait.until(lambda _: b.find_element(By.ID, "page-info").text == f"1–24 of {len(rows)} pairs")
        first_page = [e.get_attribute("data-patch") for e in b.find_elements(By.CSS_SELECTOR, "#grid .card")]
        assert len(second) == 24 and not set(second) & set(first_page)
        # 3. a filter narrows it (the country ticked above, applied now)
        b.find_element(By.ID, "apply").click()
        expected = sum(r["country"] == country for r in rows)
        wait.until(lambda _: b.find_element(By.ID, "grid").get_attribute("data-total") == str(expected))
        cards = texts("#grid .card .id")
        assert 0 < len(cards) <= min(24, expected) < len(rows) and all(t.startswith(country) for t in cards)
        screenshot(b, "3-filtered")
        # 4. a patch view: metadata, probabilities, three kinds of neighbours
        first = b.find_element(By.CSS_SELECTOR, "#grid .card")
        pid = first.get_attribute("data-patch")
        first.click()
        wait.until(lambda _: len(b.find_elements(By.CSS_SELECTOR, "#view-probs tbody tr")) == 19)
        wait.until(lambda _: len(b.find_elements(By.CSS_SELECTOR, "#view-neighbours .neighbours .card")) == 18)
        assert b.find_element(By.ID, "view-title").text == pid and "#patch=" in b.current_url
        sections = texts("#view-neighbours h3")
        assert len(sections) == 3 and any("S1 → S2" in s for s in sections)
        assert all(t.startswith("score ") for t in texts("#view-neighbours .score"))
        assert all(t.startswith("shared: ") for t in texts("#view-neighbours .shared"))
        assert pid not in [
            e.get_attribute("data-patch") for e in b.find_elements(By.CSS_SELECTOR, "#view-neighbours .card")
        ]
        screenshot(b, "4-patch-view")
        # one click on a neighbour opens its view; Escape closes it, the back button reopens the first one
        neighbour = b.find_element(By.CSS_SELECTOR, "#view-neighbours .card")
        other = neighbour.get_attribute("data-patch")
        neighbour.click()
        wait.until(lambda _: b.find_element(By.ID, "view-title").text == other)
        wait.until(lambda _: len(b.find_elements(By.CSS_SELECTOR, "#view-neighbours .card")) == 18)
        b.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        wait.until(lambda _: not b.find_element(By.ID, "view").is_displayed())
        assert "#patch=" not in b.current_url  # closing adds no history entry
        b.back()
        wait.until(lambda _: b.find_element(By.ID, "view").is_displayed())
        wait.until(lambda _: b.find_element(By.ID, "view-title").text == pid)
        wait.until(lambda _: len(b.find_elements(By.CSS_SELECTOR, "#view-neighbours .card")) == 18)
        # a neighbour opened while the view still loads: nothing of the first patch lands in the second's view
        b.find_element(By.CSS_SELECTOR, "#view-neighbours .card").click()
        b.back()
        b.forward()
        wait.until(lambda _: len(b.find_elements(By.CSS_SELECTOR, "#view-neighbours .card")) == 18)
        time.sleep(1)  # room for a late answer of the earlier views to (wrongly) land
        assert len(b.find_elements(By.CSS_SELECTOR, "#view-neighbours .card")) == 18
        assert len(texts("#view-neighbours h3")) == 3
        b.find_element(By.ID, "close").click()
        assert console_errors(b) == []
        # 5. an upload: the whole folders of a real patch pair, S2 and S1 (their metadata JSON is left out)
        files = [str(p) for d in (S2_DIRS[0], S1_DIRS[0]) for p in sorted(d.iterdir())]
        assert any(f.endswith(".json") for f in files)
        b.find_element(By.ID, "upload-files").send_keys("\n".join(files))
        wait.until(lambda _: len(b.find_elements(By.CSS_SELECTOR, "#view-probs tbody tr")) == 19)
        wait.until(lambda _: len(b.find_elements(By.CSS_SELECTOR, "#view-neighbours .card")) == 18)
        assert b.find_element(By.ID, "view-title").text.startswith("Your upload: 14 files")
        wait.until(lambda _: b.execute_script("return document.getElementById('view-img').naturalWidth") == 240)
        assert "Predicted:" in b.find_element(By.ID, "view-model").text
        screenshot(b, "5-upload")
        assert console_errors(b) == []
        b.find_element(By.ID, "close").click()
        # 6. S1 only: no classification (the model needs S2), the answer shown as a message; S1 -> S2 search works
        s1 = [str(p) for p in sorted(S1_DIRS[1].glob("*.tif"))]
        b.find_element(By.ID, "upload-files").clear()
        b.find_element(By.ID, "upload-files").send_keys("\n".join(s1))
        wait.until(lambda _: len(b.find_elements(By.CSS_SELECTOR, "#view-neighbours .card")) == 6)
        assert texts("#view-neighbours h3") == ["S1 → S2: optical patches found by the radar patch"]
        wait.until(lambda _: texts("#errors .error"))
        message = texts("#errors .error")[0]
        assert message.startswith("Classifying the upload:") and "B02" in message, message
        screenshot(b, "6-upload-s1-only")
        assert console_errors(b, allowed=("status of 422",)) == []
