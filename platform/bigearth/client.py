"""Python client for the BigEarthNet service (`bigearth.serving`): typed results, retries, clear errors.

    from bigearth.client import Client
    with Client("http://127.0.0.1:8000", api_key=None) as c:
        c.classify("BigEarthNet-v1.0/S2A_..._87_48", "BigEarthNet-S1-v1.0/S1A_..._87_48")   # band folders
        c.classify(patch_id="S2A_MSIL2A_...")                                              # an archived pair
        m = c.segment(patch_id="S2A_MSIL2A_..."); m.shares, m.png_bytes                    # a land-cover map
        c.reference_map("S2A_MSIL2A_...")                                                  # the archive's map, PNG
        c.search(patch_id="S2A_MSIL2A_...", k=10, filter={"labels_any": ["Inland waters"], "split": "train"})
        c.search(patch=["S1A_..."], using="s2", query_modality="s1")                      # S1 upload -> S2
        c.patch("S2A_MSIL2A_..."), c.rgb("S2A_MSIL2A_...")                                  # metadata, PNG
        c.browse({"country": "Portugal", "season": "summer"}, limit=50), c.facets()         # the archive

`AsyncClient` has the same methods as coroutines. Request/response models are `bigearth.api.schemas`'s, the ones the
server validates with.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tenacity

from bigearth.api.schemas import (
    BrowseRequest,
    BrowseResponse,
    ClassifyResponse,
    Facets,
    PatchInfo,
    PatchList,
    Ready,
    SearchFilter,
    SearchRequest,
    SearchResponse,
    SegmentResponse,
    ServiceError,
)
from bigearth.api.uploads import band_of
from bigearth.core.secrets import read_secret_file

PatchLike = str | Path | Sequence[str | Path] | Mapping[str, np.ndarray]
RETRY_STATUS = {429, 502, 503, 504}
__all__ = ["AsyncClient", "Client", "ServiceError", "patch_files"]


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        raise ServiceError(response.status_code, body.get("error", "error"), body.get("message", ""), body.get("field"))
    except (ValueError, AttributeError):
        raise ServiceError(response.status_code, "error", response.text[:500]) from None


def patch_files(patch: PatchLike) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart parts for a patch: band folders / band files (GeoTIFF), or a dict of arrays (sent as .npz)."""
    if isinstance(patch, Mapping):
        buf = io.BytesIO()
        arrays: dict[str, Any] = {k: np.asarray(v) for k, v in patch.items()}
        np.savez(buf, **arrays)
        return [("patch.npz", ("patch.npz", buf.getvalue(), "application/octet-stream"))]
    items = [patch] if isinstance(patch, (str, Path)) else list(patch)
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            files.extend(sorted(p for p in item.iterdir() if p.suffix.lower() in (".tif", ".tiff")))
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such band file or patch folder")
    parts = []
    for f in files:
        band = band_of(f.name)
        if band is None:
            raise ValueError(
                f"{f}: cannot tell which band this file is (expected a name ending in _B02.tif, _VV.tif, ...)"
            )
        parts.append((band, (f.name, f.read_bytes(), "image/tiff")))
    if not parts:
        raise ValueError(f"{patch}: no band GeoTIFFs found")
    return parts


def _classify_request(patch: Sequence[PatchLike], patch_id: str | None, threshold: float | None) -> dict[str, Any]:
    """httpx keyword arguments of a classify call: JSON for an archived pair, multipart for a patch."""
    if patch_id is not None:
        if patch:
            raise ValueError("give either a patch or a patch_id")
        return {"json": {"patch_id": patch_id} | ({"threshold": threshold} if threshold is not None else {})}
    return {"files": _flatten(patch), "params": {"threshold": threshold} if threshold is not None else None}


def _segment_request(patch: Sequence[PatchLike], patch_id: str | None) -> dict[str, Any]:
    """httpx keyword arguments of a segment call: JSON for an archived pair, multipart for a patch."""
    if patch_id is not None:
        if patch:
            raise ValueError("give either a patch or a patch_id")
        return {"json": {"patch_id": patch_id}}
    if not patch:
        raise ValueError("give a patch (band folders, files or arrays) or a patch_id")
    return {"files": _flatten(patch)}


def _search_request(
    patch: Sequence[PatchLike],
    patch_id: str | None,
    vector: Sequence[float] | None,
    k: int,
    using: str,
    query_modality: str | None,
    filter: SearchFilter | Mapping[str, Any] | None,
    exact: bool,
) -> dict[str, Any]:
    """httpx keyword arguments of a search call, validated with the server's `SearchRequest` before sending:
    JSON for a patch id or a vector, multipart (files + a `request` field) for an uploaded patch."""
    if patch and (patch_id is not None or vector is not None):
        raise ValueError("give a patch, a patch_id or a vector, not several")
    flt = SearchFilter.model_validate(filter) if isinstance(filter, Mapping) else filter
    req = SearchRequest(
        patch_id=patch_id,
        vector=None if vector is None else [float(x) for x in vector],
        k=k,
        using=using,  # type: ignore[arg-type]
        query_modality=query_modality,  # type: ignore[arg-type]
        filter=flt,
        exact=exact,
    )
    body = req.model_dump(mode="json", exclude_none=True)
    if patch:
        return {"files": _flatten(patch), "data": {"request": json.dumps(body)}}
    return {"json": body}


def _browse(filter: SearchFilter | Mapping[str, Any] | None, limit: int, cursor: str | None) -> dict[str, Any]:
    flt = SearchFilter.model_validate(filter) if isinstance(filter, Mapping) else filter
    return BrowseRequest(filter=flt, limit=limit, cursor=cursor).model_dump(mode="json", exclude_none=True)


def _page(split: str | None, offset: int, limit: int) -> dict[str, Any]:
    return {"offset": offset, "limit": limit} | ({"split": split} if split else {})


class _Base:
    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.25,
    ) -> None:
        self.base_url = (base_url or os.environ.get("BIGEARTH_URL") or "http://127.0.0.1:8000").rstrip("/")
        key = api_key or os.environ.get("BIGEARTH_API_KEY") or None
        if key is None and os.environ.get("BIGEARTH_API_KEY_FILE"):  # a mounted secret
            key = read_secret_file(os.environ["BIGEARTH_API_KEY_FILE"], "BIGEARTH_API_KEY_FILE")
        self.headers = {"X-API-Key": key} if key else {}
        self.timeout, self.retries, self.backoff = timeout, retries, backoff

    def _retrying(self) -> dict[str, Any]:
        """tenacity's arguments: up to `retries` more tries of a 429/502/503/504 or a connection error, then the
        last response (which `_raise_for` raises) or error."""
        return {
            "retry": tenacity.retry_if_exception_type(httpx.TransportError)
            | tenacity.retry_if_result(lambda r: r.status_code in RETRY_STATUS),
            "stop": tenacity.stop_after_attempt(self.retries + 1),
            "wait": self._wait,
            "retry_error_callback": lambda state: state.outcome.result(),
        }

    def _wait(self, state: tenacity.RetryCallState) -> float:
        """The server's Retry-After (seconds) when it gives one, else `backoff * 2**(n - 1)` after the n-th try."""
        outcome = state.outcome
        after = outcome.result().headers.get("retry-after") if outcome and not outcome.failed else None
        if after and after.replace(".", "", 1).isdigit():
            return float(after)
        return float(self.backoff * 2 ** (state.attempt_number - 1))


class Client(_Base):
    """Synchronous client. Retries 429/502/503/504 and connection errors with exponential backoff."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response: httpx.Response = tenacity.Retrying(**self._retrying())(self._http.request, method, path, **kwargs)
        _raise_for(response)
        return response

    def health(self) -> bool:
        return bool(self._request("GET", "/healthz").json()["status"] == "ok")

    def ready(self) -> Ready:
        return Ready.model_validate(self._request("GET", "/readyz").json())

    def classify(
        self, *patch: PatchLike, patch_id: str | None = None, threshold: float | None = None
    ) -> ClassifyResponse:
        """Classify band folders/files or a dict of arrays (several folders: S2 and S1 of one pair), or an
        archived pair by `patch_id`."""
        r = self._request("POST", "/v1/classify", **_classify_request(patch, patch_id, threshold))
        return ClassifyResponse.model_validate(r.json())

    def segment(self, *patch: PatchLike, patch_id: str | None = None) -> SegmentResponse:
        """The land-cover map of band folders/files or a dict of arrays, or of an archived pair by `patch_id`:
        each class's share, the legend and the map as PNG (`.png_bytes`). A service without a segmentation model
        answers 404 (`ServiceError.error == "no_segmentation_model"`)."""
        r = self._request("POST", "/v1/segment", **_segment_request(patch, patch_id))
        return SegmentResponse.model_validate(r.json())

    def reference_map(self, patch_id: str) -> bytes:
        """The archive's reference map of a pair as a paletted PNG (a 404 when it has none)."""
        return self._request("GET", f"/v1/patches/{_quote(patch_id)}/reference.png").content

    def search(
        self,
        *patch: PatchLike,
        patch_id: str | None = None,
        vector: Sequence[float] | None = None,
        k: int = 10,
        using: str = "fused",
        query_modality: str | None = None,
        filter: SearchFilter | Mapping[str, Any] | None = None,
        exact: bool = False,
    ) -> SearchResponse:
        """Similar archived pairs to a pair (`patch_id`), a vector, or an uploaded patch (positional)."""
        request = _search_request(patch, patch_id, vector, k, using, query_modality, filter, exact)
        r = self._request("POST", "/v1/search", **request)
        return SearchResponse.model_validate(r.json())

    def patch(self, patch_id: str) -> PatchInfo:
        return PatchInfo.model_validate(self._request("GET", f"/v1/patches/{_quote(patch_id)}").json())

    def patches(self, split: str | None = None, offset: int = 0, limit: int = 100) -> PatchList:
        """Archived patch ids (of a split), a page at a time."""
        return PatchList.model_validate(self._request("GET", "/v1/patches", params=_page(split, offset, limit)).json())

    def browse(
        self, filter: SearchFilter | Mapping[str, Any] | None = None, limit: int = 24, cursor: str | None = None
    ) -> BrowseResponse:
        """A page of the archived pairs `filter` matches, with their payload; pass `next_cursor` for the next."""
        return BrowseResponse.model_validate(
            self._request("POST", "/v1/browse", json=_browse(filter, limit, cursor)).json()
        )

    def facets(self) -> Facets:
        """Pairs per split, country, season and label; the model's classes; the index's vectors."""
        return Facets.model_validate(self._request("GET", "/v1/facets").json())

    def quicklook(self, *patch: PatchLike, scale: int = 1) -> bytes:
        """True-colour PNG quicklook of an uploaded patch (band folders / files with B02, B03, B04, or arrays)."""
        return self._request("POST", "/v1/quicklook", files=_flatten(patch), params={"scale": scale}).content

    def rgb(self, patch_id: str, scale: int = 1) -> bytes:
        """True-colour PNG quicklook of an archived pair."""
        return self._request("GET", f"/v1/patches/{_quote(patch_id)}/rgb.png", params={"scale": scale}).content

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """The same calls as coroutines (httpx.AsyncClient), for many concurrent requests."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=self.timeout)

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        retrying = tenacity.AsyncRetrying(**self._retrying())  # one per call: it holds the call's state
        response: httpx.Response = await retrying(self._http.request, method, path, **kwargs)
        _raise_for(response)
        return response

    async def classify(
        self, *patch: PatchLike, patch_id: str | None = None, threshold: float | None = None
    ) -> ClassifyResponse:
        r = await self._request("POST", "/v1/classify", **_classify_request(patch, patch_id, threshold))
        return ClassifyResponse.model_validate(r.json())

    async def segment(self, *patch: PatchLike, patch_id: str | None = None) -> SegmentResponse:
        r = await self._request("POST", "/v1/segment", **_segment_request(patch, patch_id))
        return SegmentResponse.model_validate(r.json())

    async def reference_map(self, patch_id: str) -> bytes:
        return (await self._request("GET", f"/v1/patches/{_quote(patch_id)}/reference.png")).content

    async def search(
        self,
        *patch: PatchLike,
        patch_id: str | None = None,
        vector: Sequence[float] | None = None,
        k: int = 10,
        using: str = "fused",
        query_modality: str | None = None,
        filter: SearchFilter | Mapping[str, Any] | None = None,
        exact: bool = False,
    ) -> SearchResponse:
        request = _search_request(patch, patch_id, vector, k, using, query_modality, filter, exact)
        r = await self._request("POST", "/v1/search", **request)
        return SearchResponse.model_validate(r.json())

    async def patches(self, split: str | None = None, offset: int = 0, limit: int = 100) -> PatchList:
        page = _page(split, offset, limit)
        return PatchList.model_validate((await self._request("GET", "/v1/patches", params=page)).json())

    async def patch(self, patch_id: str) -> PatchInfo:
        return PatchInfo.model_validate((await self._request("GET", f"/v1/patches/{_quote(patch_id)}")).json())

    async def browse(
        self, filter: SearchFilter | Mapping[str, Any] | None = None, limit: int = 24, cursor: str | None = None
    ) -> BrowseResponse:
        r = await self._request("POST", "/v1/browse", json=_browse(filter, limit, cursor))
        return BrowseResponse.model_validate(r.json())

    async def facets(self) -> Facets:
        return Facets.model_validate((await self._request("GET", "/v1/facets")).json())

    async def quicklook(self, *patch: PatchLike, scale: int = 1) -> bytes:
        return (await self._request("POST", "/v1/quicklook", files=_flatten(patch), params={"scale": scale})).content

    async def rgb(self, patch_id: str, scale: int = 1) -> bytes:
        return (await self._request("GET", f"/v1/patches/{_quote(patch_id)}/rgb.png", params={"scale": scale})).content

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _flatten(patches: Sequence[PatchLike]) -> list[tuple[str, tuple[str, bytes, str]]]:
    parts: list[tuple[str, tuple[str, bytes, str]]] = []
    for p in patches:
        parts.extend(patch_files(p))
    return parts


def _quote(patch_id: str) -> str:
    from urllib.parse import quote

    return quote(patch_id, safe="")
